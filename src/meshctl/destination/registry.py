"""The local registry: services, endpoints and ServiceProfiles from one file.

Used by ``meshctl demo`` (no cluster) and by tests.  The file is YAML or JSON
(JSON is YAML); its shape is documented in ``docs/destination.md``::

    clusterDomain: cluster.local          # optional
    services:
      - name: price-api
        namespace: shop
        clusterIPs: [10.96.0.20]           # optional
        ports:
          - port: 8080
            endpoints:
              - address: 127.0.0.1:9001
                weight: 1                  # optional
                labels: {pod: price-api-0} # optional
                identity: price-api.shop.serviceaccount.identity.meshctl.cluster.local
                meshed: true               # optional; default: true when identity is set
                protocolHint: h2           # optional: h2, http1 or opaque
    profiles:                              # ServiceProfile objects, as `meshctl profile` prints them
      - apiVersion: meshctl.io/v1alpha2
        kind: ServiceProfile
        metadata: {name: price-api.shop.svc.cluster.local, namespace: shop}
        spec: {routes: [...]}

:class:`LocalRegistry` polls the file (stat, then content) and publishes a new
snapshot when it changes.  A file that became invalid is reported once and
the last good view is kept: proxies keep their endpoints.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshctl.destination.discovery import (DEFAULT_CLUSTER_DOMAIN, ServicePort, ServiceRecord, Snapshot,
                                           SnapshotDiscovery)
from meshctl.errors import InputError
from meshctl_proxy.discovery.resolution import WeightedAddr, ResolutionError, sorted_endpoints

log = logging.getLogger("meshctl.destination")

POLL_INTERVAL = 0.25  # seconds; a stat() per poll is cheap and needs no inotify


def _fail(where: str, message: str) -> InputError:
    return InputError(f"{where}: {message}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "expected a map")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, "expected a list")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or not all(c.isalnum() or c in "-." for c in value):
        raise _fail(where, f"expected a DNS name, got {value!r}")
    return value.lower()


def parse_registry(doc: Any, *, source: str = "registry") -> Snapshot:
    """The :class:`Snapshot` a registry document describes; InputError naming the field otherwise."""
    if doc is None:
        doc = {}
    root = _mapping(doc, source)
    unknown = sorted(set(root) - {"clusterDomain", "services", "profiles"})
    if unknown:
        raise _fail(f"{source}: {unknown[0]}", "unknown field (expected clusterDomain, services, profiles)")
    domain = root.get("clusterDomain", DEFAULT_CLUSTER_DOMAIN)
    domain = _name(domain, f"{source}: clusterDomain").strip(".")
    services = []
    seen: set[tuple[str, str]] = set()
    for i, svc_doc in enumerate(_list(root.get("services"), f"{source}: services")):
        where = f"{source}: services[{i}]"
        svc = _mapping(svc_doc, where)
        name = _name(svc.get("name"), f"{where}.name")
        ns = _name(svc.get("namespace", "default"), f"{where}.namespace")
        if (name, ns) in seen:
            raise _fail(f"{where}.name", f"service {name}.{ns} listed twice")
        seen.add((name, ns))
        ips = svc.get("clusterIPs", [svc["clusterIP"]] if "clusterIP" in svc else [])
        cluster_ips = []
        for j, ip in enumerate(_list(ips, f"{where}.clusterIPs")):
            try:
                cluster_ips.append(str(ipaddress.ip_address(str(ip))))
            except ValueError:
                raise _fail(f"{where}.clusterIPs[{j}]", f"not an IP address: {ip!r}") from None
        ports = []
        for j, port_doc in enumerate(_list(svc.get("ports"), f"{where}.ports")):
            pwhere = f"{where}.ports[{j}]"
            pd = _mapping(port_doc, pwhere)
            port = pd.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
                raise _fail(f"{pwhere}.port", f"expected a port number 1..65535, got {port!r}")
            eps = []
            for k, ep_doc in enumerate(_list(pd.get("endpoints"), f"{pwhere}.endpoints")):
                try:
                    eps.append(WeightedAddr.from_json(ep_doc, where=f"{pwhere}.endpoints[{k}]"))
                except ResolutionError as exc:
                    raise InputError(f"{source}: {exc}") from None
            ports.append(ServicePort(port, sorted_endpoints(eps)))
        services.append(ServiceRecord(name, ns, tuple(ports), tuple(cluster_ips)))
    profiles: dict[str, Mapping[str, Any]] = {}
    for i, prof in enumerate(_list(root.get("profiles"), f"{source}: profiles")):
        where = f"{source}: profiles[{i}]"
        p = _mapping(prof, where)
        if p.get("kind", "ServiceProfile") != "ServiceProfile":
            raise _fail(f"{where}.kind", f"expected ServiceProfile, got {p.get('kind')!r}")
        meta = _mapping(p.get("metadata"), f"{where}.metadata")
        pname = _name(meta.get("name"), f"{where}.metadata.name").rstrip(".")
        _mapping(p.get("spec", {}), f"{where}.spec")
        _validate_profile(p, where)
        profiles[pname] = _plain(p)
    return Snapshot(tuple(services), profiles, domain)


def _validate_profile(doc: Mapping[str, Any], where: str) -> None:
    # The ServiceProfile model is defined once, in meshctl_proxy.policy.service_profile; a
    # profile the proxy could not use must be refused here, not at request time.
    from meshctl_proxy.policy.service_profile import ProfileError, ServiceProfile

    try:
        ServiceProfile.from_dict(_plain(doc))
    except ProfileError as exc:
        raise _fail(where, str(exc)) from None


def _plain(value: Any) -> Any:
    """YAML nodes into plain JSON-able data (what goes on the wire)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_registry(path: str | os.PathLike[str]) -> Snapshot:
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{p}{at}: not valid YAML or JSON: {problem}") from None
    return parse_registry(doc, source=str(p))


class LocalRegistry(SnapshotDiscovery):
    """A :class:`~meshctl.destination.discovery.Discovery` over a registry file."""

    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = POLL_INTERVAL,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        super().__init__(load_registry(self.path))  # a bad file at start is the caller's error
        self._poll_interval = poll_interval
        self._stamp = self._stat()
        self._on_error = on_error or (lambda msg: log.error("%s", msg))
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self) -> bool:
        """Re-read the file now; True if the view changed.  Errors keep the last good view."""
        self._stamp = self._stat()
        try:
            snapshot = load_registry(self.path)
        except InputError as exc:
            msg = f"{exc} (keeping the last good registry)"
            if msg != self.last_error:
                self.last_error = msg
                self._on_error(msg)
            return False
        self.last_error = None
        return self.publish(snapshot)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            if self._stat() != self._stamp:
                self.reload()
