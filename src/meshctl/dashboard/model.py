"""What the dashboard's pages show: small frozen values, built by a source, drawn by templates.

The pages never query anything themselves: a :class:`~meshctl.dashboard.source.MeshSource`
turns Prometheus (through ``meshctl.viz``) and the mesh's inventory into these
values, so the same figures reach the browser as ``meshctl viz stat`` prints.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Golden:
    """Golden metrics of one resource over the window (Linkerd's columns)."""

    success_rate: float | None  # None: no requests in the window
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    tcp_connections: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceRow:
    """One namespace, deployment, pod or service, with how much of it is meshed."""

    kind: str  # "namespace" | "deployment" | "pod" | "service"
    namespace: str
    name: str
    meshed: int
    total: int
    golden: Golden | None  # None: no traffic seen in the window

    @property
    def href(self) -> str | None:
        if self.kind == "namespace":
            return f"/namespaces/{self.name}"
        if self.kind == "deployment":
            return f"/namespaces/{self.namespace}/deployments/{self.name}"
        return None

    @property
    def fully_meshed(self) -> bool:
        return self.total > 0 and self.meshed == self.total


@dataclasses.dataclass(frozen=True, slots=True)
class EdgeRow:
    """Traffic between this workload and one peer, with the identities mTLS proved."""

    direction: str  # "inbound": peer calls us; "outbound": we call peer
    peer: str  # the peer workload's name
    peer_href: str | None
    peer_namespace: str
    client_id: str
    server_id: str
    secured: bool
    rps: float
    success_rate: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRow:
    """One ServiceProfile route (or ``[DEFAULT]``): effective success next to actual success."""

    route: str
    service: str
    effective_success: float | None
    effective_rps: float
    actual_success: float | None  # None for inbound routes: only the caller's proxy sees attempts
    actual_rps: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def retries_helped(self) -> bool:
        return (self.effective_success is not None and self.actual_success is not None
                and self.effective_success > self.actual_success)


@dataclasses.dataclass(frozen=True, slots=True)
class Series:
    """One line of a chart: (unix time, value) points, None where there was no traffic."""

    name: str
    points: tuple[tuple[float, float | None], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Chart:
    title: str
    unit: str  # "%", "rps" or "ms"
    series: tuple[Series, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Overview:
    namespaces: tuple[ResourceRow, ...]
    deployments: tuple[ResourceRow, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class NamespacePage:
    namespace: str
    deployments: tuple[ResourceRow, ...]
    pods: tuple[ResourceRow, ...]
    services: tuple[ResourceRow, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadPage:
    row: ResourceRow
    identity: str
    pods: tuple[str, ...]
    inbound: tuple[EdgeRow, ...]
    outbound: tuple[EdgeRow, ...]
    routes: tuple[RouteRow, ...]  # outbound: the routes it calls, effective and actual
    charts: tuple[Chart, ...] = ()
    served_routes: tuple[RouteRow, ...] = ()  # inbound: the routes of its own ServiceProfile it served


@dataclasses.dataclass(frozen=True, slots=True)
class LiveCall:
    """One request seen by tap, as the live-calls table shows it."""

    at: float  # unix time of the request
    direction: str
    source: str
    destination: str
    tls: bool
    method: str
    authority: str
    path: str
    status: int | None
    latency_ms: float | None
    error: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
