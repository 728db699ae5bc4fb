"""What the destination service tells a proxy about an authority, defined once.

The destination service (``meshctl.destination``) builds these from the
cluster (or the local registry) and sends them as JSON; the proxy's
destination client (:mod:`meshctl_proxy.discovery.client`) turns the JSON back into
the same objects.  The mTLS layer reads :attr:`WeightedAddr.meshed` and
:attr:`WeightedAddr.identity` to decide whether to originate TLS and which server
identity to expect, as Linkerd's ``WeightedAddr.tls_identity`` does.

Standard library only: imported by the proxy and the CLI alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

# Linkerd's ProtocolHint: "h2" means the endpoint's proxy accepts HTTP/2 from
# another proxy (so HTTP/1 may be upgraded); "opaque" means forward as TCP.
PROTOCOL_HINTS = ("", "h2", "http1", "opaque")
DEFAULT_PORT = 80


class ResolutionError(ValueError):
    """A resolution document that does not describe endpoints; names the field."""


def normalize_authority(authority: str, *, default_port: int = DEFAULT_PORT) -> str:
    """``Name.NS.svc.cluster.local.:8080`` -> ``name.ns.svc.cluster.local:8080``.

    Lower case (DNS names are case-insensitive, RFC 4343), no trailing root dot
    (Linkerd's suffixes carry one, Host headers usually do not), explicit port.
    """
    text = authority.strip()
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        host = f"[{host.lower()}]"
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            host, port = text, ""
        host = host.lower().rstrip(".")
        if ":" in host or "/" in host or " " in host:
            raise ValueError(f"bad host in authority {authority!r} (IPv6 addresses go in brackets)")
    if not host or host == "[]":
        raise ValueError(f"empty host in authority {authority!r}")
    if port and not (port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"bad port in authority {authority!r}")
    return f"{host}:{int(port) if port else default_port}"


def split_authority(authority: str) -> tuple[str, int]:
    host, _, port = normalize_authority(authority).rpartition(":")
    return host.strip("[]"), int(port)


@dataclasses.dataclass(frozen=True, slots=True)
class WeightedAddr:
    """One address behind an authority, with what the proxy needs to talk to it."""

    host: str
    port: int
    weight: int = 1
    labels: tuple[tuple[str, str], ...] = ()  # sorted pairs: hashable and deterministic
    meshed: bool = False  # a meshctl proxy runs in front of it
    identity: str = ""  # the TLS identity its proxy must present, when meshed
    protocol_hint: str = ""

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def make(cls, host: str, port: int, *, weight: int = 1, labels: Mapping[str, str] | None = None,
             meshed: bool | None = None, identity: str = "", protocol_hint: str = "") -> "WeightedAddr":
        return cls(host, int(port), int(weight), tuple(sorted((labels or {}).items())),
                   bool(identity) if meshed is None else meshed, identity, protocol_hint)

    def to_json(self) -> dict[str, Any]:
        return {"address": str(self), "weight": self.weight, "labels": dict(self.labels),
                "meshed": self.meshed, "identity": self.identity, "protocolHint": self.protocol_hint}

    @classmethod
    def from_json(cls, doc: Any, *, where: str = "endpoint") -> "WeightedAddr":
        if not isinstance(doc, Mapping):
            raise ResolutionError(f"{where}: expected an object")
        try:
            host, port = split_authority(str(doc["address"]))
        except KeyError:
            raise ResolutionError(f"{where}.address: missing") from None
        except ValueError as exc:
            raise ResolutionError(f"{where}.address: {exc}") from None
        if ":" not in str(doc["address"]):
            raise ResolutionError(f"{where}.address: expected HOST:PORT, got {doc['address']!r}")
        weight = doc.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise ResolutionError(f"{where}.weight: expected a non-negative integer, got {weight!r}")
        labels = doc.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in labels.items()):
            raise ResolutionError(f"{where}.labels: expected a map of strings")
        identity = doc.get("identity") or ""
        if not isinstance(identity, str):
            raise ResolutionError(f"{where}.identity: expected a string")
        meshed = doc.get("meshed", bool(identity))
        if not isinstance(meshed, bool):
            raise ResolutionError(f"{where}.meshed: expected true or false")
        hint = doc.get("protocolHint") or ""
        if hint not in PROTOCOL_HINTS:
            raise ResolutionError(f"{where}.protocolHint: expected one of {', '.join(h for h in PROTOCOL_HINTS if h)}")
        return cls.make(host, port, weight=weight, labels=labels, meshed=meshed, identity=identity,
                        protocol_hint=hint)


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    """Everything the mesh knows about one authority at one moment.

    ``known`` is False for names the mesh does not serve: the proxy then
    forwards to the address it was given, as Linkerd does for names outside
    its profile suffixes.  ``profile`` is the ServiceProfile document (the
    CRD object as JSON) or None; the proxy parses it with
    :meth:`meshctl_proxy.policy.service_profile.ServiceProfile.from_dict`.
    """

    authority: str
    known: bool
    endpoints: tuple[WeightedAddr, ...] = ()
    profile: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"authority": self.authority, "known": self.known,
                "endpoints": [e.to_json() for e in self.endpoints], "profile": self.profile}

    @classmethod
    def from_json(cls, doc: Any) -> "Resolution":
        if not isinstance(doc, Mapping):
            raise ResolutionError("resolution: expected an object")
        authority = doc.get("authority")
        if not isinstance(authority, str) or not authority:
            raise ResolutionError("resolution.authority: expected a string")
        eps = doc.get("endpoints") or []
        if not isinstance(eps, list):
            raise ResolutionError("resolution.endpoints: expected a list")
        profile = doc.get("profile")
        if profile is not None and not isinstance(profile, Mapping):
            raise ResolutionError("resolution.profile: expected an object or null")
        return cls(authority, bool(doc.get("known", True)),
                   sorted_endpoints(WeightedAddr.from_json(e, where=f"resolution.endpoints[{i}]") for i, e in enumerate(eps)),
                   profile)


def sorted_endpoints(endpoints: Iterable[WeightedAddr]) -> tuple[WeightedAddr, ...]:
    """Deterministic order (by address), one entry per address (the last wins)."""
    by_addr = {e.address: e for e in endpoints}
    return tuple(by_addr[a] for a in sorted(by_addr))
