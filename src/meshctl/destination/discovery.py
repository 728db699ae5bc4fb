"""The discovery interface: how the destination service sees the cluster.

The destination server knows nothing but :class:`Discovery`.  An
implementation keeps a current view of services, their endpoints and their
ServiceProfiles, answers :meth:`Discovery.resolve` from it, and bumps a
version on every change so that watchers wake up.

Most implementations are easiest written as a :class:`SnapshotDiscovery`:
build a :class:`Snapshot` (plain frozen data) from whatever the source is --
a registry file, or Kubernetes Services + EndpointSlices + Pods +
ServiceProfiles -- and :meth:`SnapshotDiscovery.publish` it.  The resolution
rules (names, cluster IPs, pod IPs, which profile applies) then live here,
once, for every source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from meshctl_proxy.discovery.resolution import WeightedAddr, Resolution, normalize_authority

DEFAULT_CLUSTER_DOMAIN = "cluster.local"


@runtime_checkable
class Discovery(Protocol):
    """One view of the cluster, kept current by :meth:`run`."""

    @property
    def version(self) -> int:
        """Increases on every change of the view (never decreases)."""

    def resolve(self, authority: str) -> Resolution:
        """What the mesh knows about *authority* (``name:port`` or ``ip:port``) now.

        Names are fully qualified service names (``svc.ns.svc.cluster.local``);
        IPs are Service cluster IPs or endpoint (pod) IPs.  Unknown
        authorities resolve with ``known=False``.
        """

    async def wait_changed(self, version: int) -> int:
        """Return the current version as soon as it is greater than *version*."""

    async def run(self) -> None:
        """Keep the view current until cancelled (watch files, watch the API)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    endpoints: tuple[WeightedAddr, ...] = ()  # target ports already applied


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceRecord:
    name: str
    namespace: str
    ports: tuple[ServicePort, ...] = ()
    cluster_ips: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The cluster as plain data; :meth:`resolve` holds the mesh's naming rules."""

    services: tuple[ServiceRecord, ...] = ()
    # ServiceProfile documents by metadata.name, the service's FQDN
    # (``svc.ns.svc.cluster.local``), as Linkerd names them.
    profiles: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN

    def fqdn(self, svc: ServiceRecord) -> str:
        return f"{svc.name}.{svc.namespace}.svc.{self.cluster_domain}"

    def resolve(self, authority: str) -> Resolution:
        auth = normalize_authority(authority)
        host, _, port_text = auth.rpartition(":")
        port = int(port_text)
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is None:
            for svc in self.services:
                if self.fqdn(svc) == host:
                    return self._service_resolution(auth, svc, port)
            return Resolution(auth, known=False)
        for svc in self.services:
            if any(ipaddress.ip_address(c) == ip for c in svc.cluster_ips):
                return self._service_resolution(auth, svc, port)
        # An endpoint (pod) IP: Linkerd resolves it to that one endpoint, so the
        # caller still learns whether it is meshed and which identity it has.
        for svc in self.services:
            for sp in svc.ports:
                for ep in sp.endpoints:
                    if ep.port == port and _same_ip(ep.host, ip):
                        return Resolution(auth, True, (ep,), None)
        return Resolution(auth, known=False)

    def _service_resolution(self, auth: str, svc: ServiceRecord, port: int) -> Resolution:
        for sp in svc.ports:
            if sp.port == port:
                return Resolution(auth, True, _with_service_labels(sp.endpoints, svc), self.profiles.get(self.fqdn(svc)))
        return Resolution(auth, known=False)  # not a port of the service: forward as addressed


def _with_service_labels(endpoints, svc: ServiceRecord):
    """The endpoints labelled with their Service, as Linkerd's destination labels a service's
    endpoints (``namespace``, ``service``); proxies export them as ``dst_namespace``, ``dst_service``."""
    extra = {"namespace": svc.namespace, "service": svc.name}
    return tuple(dataclasses.replace(ep, labels=tuple(sorted({**extra, **ep.label_map}.items())))
                 for ep in endpoints)


def _same_ip(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(host) == ip
    except ValueError:
        return False


class SnapshotDiscovery:
    """A :class:`Discovery` whose view is the last published :class:`Snapshot`.

    Subclasses implement :meth:`run` (produce snapshots) and call
    :meth:`publish`.  Publishing an equal snapshot changes nothing, so
    watchers are only woken by real changes.
    """

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot or Snapshot()
        self._version = 1
        # Set (and replaced) on every change; asyncio.Event.set() is sync, so
        # publish() needs no task.  Call publish() on the event loop's thread
        # (from a watch thread: loop.call_soon_threadsafe(d.publish, snap)).
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def resolve(self, authority: str) -> Resolution:
        return self._snapshot.resolve(authority)

    def publish(self, snapshot: Snapshot) -> bool:
        """Make *snapshot* the view; True if it differs from the previous one."""
        if snapshot == self._snapshot:
            return False
        self._snapshot = snapshot
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def wait_changed(self, version: int) -> int:
        while self._version <= version:
            await self._changed.wait()
        return self._version

    async def run(self) -> None:  # a static view: nothing to watch
        await asyncio.Event().wait()
