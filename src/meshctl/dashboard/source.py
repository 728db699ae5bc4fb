"""Where the dashboard's figures come from: Prometheus, the mesh's inventory, the proxies' tap.

:class:`LocalSource` serves a mesh without a cluster (``meshctl demo up``'s
``mesh.json``, contract B, or only a Prometheus URL): the inventory (which
namespaces, deployments, pods and services exist, which are meshed, their
identities) comes from the state file, else from the proxies Prometheus
scrapes; the golden metrics come from Prometheus with Linkerd's queries; live
calls from the proxies' tap with the mesh's tap credentials.

Every page is one evaluation time (``at``) for all its instant queries, so
the numbers on a page agree with each other.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from pathlib import Path

from meshctl.dashboard.model import (Chart, EdgeRow, Golden, NamespacePage, Overview, ResourceRow, RouteRow, Series,
                                     WorkloadPage)

WINDOW_S = 60  # linkerd viz stat's default --time-window, and its dashboard's
CHART_SPAN_S = 600  # the last ten minutes in the small charts
CHART_STEP_S = 15
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


class MeshState:
    """``mesh.json`` of a local mesh, read when it changes: ``demo up`` may start the dashboard before
    it writes the file (last, once all is ready), and rewrites it when it restarts what died."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "mesh.json"
        self._seen: tuple[float, int] | None = None
        self._mesh = None

    def get(self):
        from meshctl.demo import state
        from meshctl.errors import MeshctlError

        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise MeshctlError(f"{self.path}: not found: the local mesh is not up (meshctl demo up)") from None
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._seen:
            self._mesh, self._seen = state.load(self.path.parent), stamp
        return self._mesh


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    """One deployment the dashboard knows: its pods, Service, identity and whether its pods are meshed."""

    namespace: str
    name: str
    pods: tuple[str, ...]
    meshed_pods: tuple[str, ...]
    service: str | None
    identity: str


def inventory_from_mesh(mesh) -> list[Workload]:
    """The local mesh's workloads (``mesh.json``): every pod there runs a proxy."""
    found: dict[tuple[str, str], list] = {}
    for w in mesh.workloads:
        found.setdefault((w.namespace, w.name), []).append(w)
    return [Workload(ns, name, tuple(w.pod for w in ws), tuple(w.pod for w in ws if w.proxy is not None),
                     ws[0].service, ws[0].identity)
            for (ns, name), ws in sorted(found.items())]


def _sel(**labels: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def identity_workload(identity: str) -> tuple[str, str] | None:
    """``NAME.NS.serviceaccount.identity.MESH.DOMAIN`` -> (NS, NAME): whose proxy proved that identity."""
    parts = identity.split(".")
    if len(parts) > 3 and parts[2] == "serviceaccount":
        return parts[1], parts[0]
    return None


class LocalSource:
    """The dashboard's figures for a mesh without a cluster."""

    def __init__(self, prometheus_url: str, mesh_dir: Path | None = None, *, window_s: int = WINDOW_S,
                 client=None) -> None:
        from meshctl.viz.promclient import PrometheusClient

        self.mesh_state = MeshState(mesh_dir) if mesh_dir is not None else None
        self.window = f"{int(window_s)}s"
        self.prom = client or PrometheusClient(prometheus_url)

    @property
    def mesh(self):
        return self.mesh_state.get() if self.mesh_state is not None else None

    # --- inventory ---------------------------------------------------------------------

    def workloads(self, at: float) -> list[Workload]:
        mesh = self.mesh
        if mesh is not None:
            return inventory_from_mesh(mesh)
        # Only a Prometheus: the proxies it scrapes are the mesh (each target is a meshed pod).
        found: dict[tuple[str, str], set[str]] = defaultdict(set)
        for s in self.prom.query('count by (namespace, deployment, pod) (up{job="linkerd-proxy"})', at=at):
            if s.get("deployment"):
                found[(s.get("namespace"), s.get("deployment"))].add(s.get("pod"))
        return [Workload(ns, name, tuple(sorted(pods)), tuple(sorted(pods)), None, "")
                for (ns, name), pods in sorted(found.items())]

    # --- golden metrics ----------------------------------------------------------------

    def _golden(self, by: str, at: float, *, direction: str = "inbound", **match: str) -> dict[tuple, Golden]:
        """Golden metrics grouped by the labels *by* (Linkerd's stat queries)."""
        sel = _sel(direction=direction, **match)
        w = self.window
        totals: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for s in self.prom.query(f"sum(increase(response_total{{{sel}}}[{w}])) by ({by}, classification)", at=at):
            key = tuple(s.get(k) for k in by.split(", "))
            totals[key][0] += s.value
            if s.get("classification") == "success":
                totals[key][1] += s.value
        quantiles: dict[tuple, dict[str, float | None]] = defaultdict(dict)
        for name, q in QUANTILES:
            promql = f"histogram_quantile({q}, sum(rate(response_latency_ms_bucket{{{sel}}}[{w}])) by (le, {by}))"
            for s in self.prom.query(promql, at=at):
                quantiles[tuple(s.get(k) for k in by.split(", "))][name] = _num(s.value)
        tcp: dict[tuple, float] = {}
        tcp_sel = _sel(direction="inbound", peer="src", **match) if direction == "inbound" else _sel(direction=direction, peer="dst", **match)
        for s in self.prom.query(f"sum(tcp_open_connections{{{tcp_sel}}}) by ({by})", at=at):
            tcp[tuple(s.get(k) for k in by.split(", "))] = s.value
        out = {}
        for key in set(totals) | set(tcp):
            requests, ok = totals.get(key, (0.0, 0.0))
            q = quantiles.get(key, {})
            out[key] = Golden(ok / requests if requests else None, requests / float(self.window[:-1]),
                              q.get("p50"), q.get("p95"), q.get("p99"), tcp.get(key))
        return out

    # --- pages -------------------------------------------------------------------------

    def overview(self) -> Overview:
        at = time.time()
        workloads = self.workloads(at)
        by_deploy = self._golden("namespace, deployment", at)
        by_ns = self._golden("namespace", at)
        namespaces = sorted({w.namespace for w in workloads} | {k[0] for k in by_ns if k[0]})
        ns_rows = tuple(ResourceRow("namespace", ns, ns, sum(len(w.meshed_pods) > 0 for w in workloads if w.namespace == ns),
                                    sum(1 for w in workloads if w.namespace == ns), by_ns.get((ns,)))
                        for ns in namespaces)
        deploy_rows = tuple(ResourceRow("deployment", w.namespace, w.name, len(w.meshed_pods), len(w.pods),
                                        by_deploy.get((w.namespace, w.name)))
                            for w in workloads)
        return Overview(ns_rows, deploy_rows)

    def namespace(self, ns: str) -> NamespacePage:
        at = time.time()
        workloads = [w for w in self.workloads(at) if w.namespace == ns]
        if not workloads:
            raise LookupError(f"namespace {ns!r} has no meshed workloads")
        deploys = self._golden("deployment", at, namespace=ns)
        pods = self._golden("pod", at, namespace=ns)
        # A Service's figures are what its callers saw (Linkerd: outbound traffic by dst_service).
        services = self._golden("dst_service", at, direction="outbound", dst_namespace=ns)
        return NamespacePage(
            ns,
            tuple(ResourceRow("deployment", ns, w.name, len(w.meshed_pods), len(w.pods), deploys.get((w.name,)))
                  for w in workloads),
            tuple(ResourceRow("pod", ns, p, int(p in w.meshed_pods), 1, pods.get((p,)))
                  for w in workloads for p in w.pods),
            tuple(ResourceRow("service", ns, w.service, len(w.meshed_pods), len(w.pods), services.get((w.service,)))
                  for w in workloads if w.service),
        )

    def workload(self, ns: str, name: str) -> WorkloadPage:
        at = time.time()
        workloads = self.workloads(at)
        me = next((w for w in workloads if w.namespace == ns and w.name == name), None)
        if me is None:
            raise LookupError(f"deployment {name!r} not found in namespace {ns!r}")
        golden = self._golden("deployment", at, namespace=ns, deployment=name).get((name,))
        row = ResourceRow("deployment", ns, name, len(me.meshed_pods), len(me.pods), golden)
        known = {(w.namespace, w.name) for w in workloads}
        return WorkloadPage(row, me.identity, me.pods, self._inbound(ns, name, at, known),
                            self._outbound(ns, name, at, known), self._routes(ns, name, at),
                            self._charts(ns, name, at))

    def _inbound(self, ns: str, name: str, at: float, known) -> tuple[EdgeRow, ...]:
        sel = _sel(direction="inbound", namespace=ns, deployment=name)
        acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for s in self.prom.query(f"sum(increase(response_total{{{sel}}}[{self.window}])) by (client_id, tls, classification)", at=at):
            key = (s.get("client_id"), s.get("tls"))
            acc[key][0] += s.value
            acc[key][1] += s.value if s.get("classification") == "success" else 0.0
        rows = []
        for (client_id, tls), (n, ok) in sorted(acc.items()):
            if n <= 0:
                continue
            owner = identity_workload(client_id) if client_id else None
            peer = owner[1] if owner else "unmeshed clients"
            href = f"/namespaces/{owner[0]}/deployments/{owner[1]}" if owner and owner in known else None
            rows.append(EdgeRow("inbound", peer, href, "", client_id, "" , tls == "true", n / self._seconds, ok / n))
        return tuple(rows)

    def _outbound(self, ns: str, name: str, at: float, known) -> tuple[EdgeRow, ...]:
        sel = _sel(direction="outbound", namespace=ns, deployment=name)
        by = "dst_namespace, dst_deployment, authority, server_id, tls, classification"
        acc: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for s in self.prom.query(f"sum(increase(response_total{{{sel}}}[{self.window}])) by ({by})", at=at):
            key = (s.get("dst_namespace"), s.get("dst_deployment"), s.get("authority"), s.get("server_id"), s.get("tls"))
            acc[key][0] += s.value
            acc[key][1] += s.value if s.get("classification") == "success" else 0.0
        me = next(iter(identity for identity in [self._identity(ns, name)]), "")
        rows = []
        for (dns, ddeploy, authority, server_id, tls), (n, ok) in sorted(acc.items()):
            if n <= 0:
                continue
            owner = (dns, ddeploy) if ddeploy else identity_workload(server_id) if server_id else None
            peer = owner[1] if owner else authority.split(".")[0]
            href = f"/namespaces/{owner[0]}/deployments/{owner[1]}" if owner and owner in known else None
            rows.append(EdgeRow("outbound", peer, href, authority, me, server_id, tls == "true",
                                n / self._seconds, ok / n))
        return tuple(rows)

    def _identity(self, ns: str, name: str) -> str:
        mesh = self.mesh
        if mesh is None:
            return ""
        return next((w.identity for w in mesh.workloads if w.namespace == ns and w.name == name), "")

    @property
    def _seconds(self) -> float:
        return float(self.window[:-1])

    def _routes(self, ns: str, name: str, at: float) -> tuple[RouteRow, ...]:
        sel = _sel(direction="outbound", namespace=ns, deployment=name)
        w = self.window
        counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
        for metric, offset in (("route_response_total", 0), ("route_actual_response_total", 2)):
            for s in self.prom.query(f"sum(increase({metric}{{{sel}}}[{w}])) by (rt_route, dst, classification)", at=at):
                key = (s.get("rt_route") or "[DEFAULT]", s.get("dst"))
                counts[key][offset] += s.value
                counts[key][offset + 1] += s.value if s.get("classification") == "success" else 0.0
        quantiles: dict[tuple[str, str], dict[str, float | None]] = defaultdict(dict)
        for qname, q in QUANTILES:
            promql = f"histogram_quantile({q}, sum(rate(route_response_latency_ms_bucket{{{sel}}}[{w}])) by (le, rt_route, dst))"
            for s in self.prom.query(promql, at=at):
                quantiles[(s.get("rt_route") or "[DEFAULT]", s.get("dst"))][qname] = _num(s.value)
        rows = []
        for (route, dst), (n, ok, actual, actual_ok) in sorted(counts.items()):
            if n <= 0 and actual <= 0:
                continue
            q = quantiles.get((route, dst), {})
            rows.append(RouteRow(route, dst, ok / n if n else None, n / self._seconds,
                                 actual_ok / actual if actual else None, actual / self._seconds,
                                 q.get("p50"), q.get("p95"), q.get("p99")))
        return tuple(rows)

    def _charts(self, ns: str, name: str, at: float) -> tuple[Chart, ...]:
        sel = _sel(direction="inbound", namespace=ns, deployment=name)
        start, step = at - CHART_SPAN_S, CHART_STEP_S
        w = "30s"  # short enough to show a change within the span, long enough to span several scrapes

        def series(label: str, promql: str, scale: float = 1.0) -> Series:
            found = self.prom.query_range(promql, start=start, end=at, step=step)
            points = found[0].points if found else ()
            return Series(label, tuple((t, None if math.isnan(v) else v * scale) for t, v in points))

        success = series("success", f'sum(rate(response_total{{{sel},classification="success"}}[{w}])) / '
                                    f"sum(rate(response_total{{{sel}}}[{w}]))", 100.0)
        rps = series("rps", f"sum(rate(response_total{{{sel}}}[{w}]))")
        latency = tuple(series(qname, f"histogram_quantile({q}, sum(rate(response_latency_ms_bucket{{{sel}}}[{w}])) by (le))")
                        for qname, q in QUANTILES)
        return (Chart("Success rate", "%", (success,)), Chart("Requests per second", "rps", (rps,)),
                Chart("Latency", "ms", latency))

    # --- live calls ----------------------------------------------------------------------

    def tap(self, ns: str, name: str):
        from meshctl.dashboard import live
        from meshctl.errors import MeshctlError

        mesh = self.mesh
        if mesh is None:
            async def refused():
                raise MeshctlError("live calls need the local mesh's state (mesh.json: the proxies' tap addresses "
                                   "and credentials); start it with meshctl demo up, or give --dir")
                yield  # pragma: no cover - makes this an async generator
            return refused()
        return live.local_calls(mesh, ns, name)
