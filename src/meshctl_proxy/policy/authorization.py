"""Who may talk to this pod: the inbound authorization policy, sans-IO.

Linkerd's default policies (``config.linkerd.io/default-inbound-policy``),
from ``config.meshctl.io/default-inbound-policy`` via
``MESHCTL_PROXY_DEFAULT_INBOUND_POLICY``:

- ``all-unauthenticated``: everyone (the default: meshing must not break
  unmeshed clients);
- ``all-authenticated``: only mTLS clients (a verified peer identity);
- ``cluster-authenticated``: mTLS clients whose address is in the cluster
  networks (``MESHCTL_PROXY_CLUSTER_NETWORKS``);
- ``deny``: nobody.

Ports in ``MESHCTL_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY``
(``config.meshctl.io/proxy-require-identity-inbound-ports``) additionally
require an identity whatever the default says.  A denied HTTP request gets
403; a denied TCP connection is closed.  Both are counted here, under
Linkerd's metric names.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from meshctl_proxy.config import ProxyConfig

ALL_UNAUTHENTICATED = "all-unauthenticated"
ALL_AUTHENTICATED = "all-authenticated"
CLUSTER_AUTHENTICATED = "cluster-authenticated"
DENY = "deny"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # for the 403 body / log line, and the metric's label


@dataclasses.dataclass(frozen=True, slots=True)
class InboundPolicy:
    default: str = ALL_UNAUTHENTICATED
    require_identity_ports: frozenset[int] = frozenset()
    cluster_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_config(cls, cfg: ProxyConfig) -> "InboundPolicy":
        return cls(cfg.default_inbound_policy, frozenset(cfg.inbound_ports_require_identity),
                   tuple(cfg.cluster_networks))

    def authorize(self, *, port: int, client_identity: str | None, client_ip: str) -> Decision:
        if self.default == DENY:
            return Decision(False, "denied by the default inbound policy (deny)")
        if port in self.require_identity_ports and client_identity is None:
            return Decision(False, f"port {port} requires an authenticated (mTLS) client")
        if self.default == ALL_AUTHENTICATED and client_identity is None:
            return Decision(False, "an authenticated (mTLS) client is required (all-authenticated)")
        if self.default == CLUSTER_AUTHENTICATED:
            if client_identity is None:
                return Decision(False, "an authenticated (mTLS) client is required (cluster-authenticated)")
            if not _in_networks(client_ip, self.cluster_networks):
                return Decision(False, f"client {client_ip} is outside the cluster networks (cluster-authenticated)")
        return Decision(True, "authenticated" if client_identity else "unauthenticated")


def _in_networks(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # dual-stack listeners report v4 clients as ::ffff:a.b.c.d
    return any(addr.version == net.version and addr in net for net in networks)


class SeriesBudget(Protocol):
    """What the metrics' series cap offers (telemetry.metrics): room for *n* more series, or not."""

    def take(self, n: int) -> bool: ...


class AuthzStats:
    """Linkerd's ``inbound_{http,tcp}_authz_{allow,deny}_total`` counters, keyed by port.

    The port is the connection's original destination, which a client picks (every inbound port is
    redirected to the proxy): *series* (the proxy's ``Metrics.series``, set when the mesh attaches)
    caps them with the other families, and a port it refuses counts under ``srv_port="overflow"``.
    """

    def __init__(self, series: SeriesBudget | None = None) -> None:
        self.counts: Counter[tuple[str, str, int | str]] = Counter()  # (protocol, "allow"/"deny", port)
        self.series = series

    def count(self, protocol: str, decision: Decision, port: int) -> None:
        key: tuple[str, str, int | str] = (protocol, "allow" if decision.allowed else "deny", port)
        counts = self.counts
        if key not in counts and self.series is not None and not self.series.take(1):
            key = (key[0], key[1], "overflow")
        counts[key] += 1

    def render(self, pod_labels: Iterable[tuple[str, str]] = ()) -> str:
        pod = "".join(f',{k}="{v}"' for k, v in pod_labels)
        out = []
        for protocol in ("http", "tcp"):
            for verdict in ("allow", "deny"):
                name = f"inbound_{protocol}_authz_{verdict}_total"
                out.append(f"# HELP {name} Inbound {protocol.upper()} {'connections' if protocol == 'tcp' else 'requests'}"
                           f" {'allowed' if verdict == 'allow' else 'denied'} by the inbound policy.\n"
                           f"# TYPE {name} counter\n")
                for (p, v, port), n in sorted(self.counts.items(), key=lambda item: str(item[0])):
                    if (p, v) == (protocol, verdict):
                        out.append(f'{name}{{srv_port="{port}"{pod}}} {n}\n')
        return "".join(out)
