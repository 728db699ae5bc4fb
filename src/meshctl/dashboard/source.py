"""Where the dashboard's figures come from: Prometheus, the mesh's inventory, the proxies' tap.

:class:`LocalSource` serves the dashboard over a Prometheus URL: the local
mesh's (``meshctl demo up``), or the viz Prometheus for the web deployment in a
cluster.  Every figure, and which namespaces, deployments and pods exist and are
meshed, comes from ``meshctl.viz.queries`` (the proxies Prometheus scrapes, as
``viz stat`` lists them); the local mesh's ``mesh.json`` (contract B), when there
is one, adds what Prometheus does not know: the workloads' identities and
Services, and the proxies' tap addresses and credentials for live calls.

Every page is one evaluation time (``at``) for all its instant queries, so
the numbers on a page agree with each other.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshctl.dashboard.model import (Chart, EdgeRow, Golden, NamespacePage, Overview, ResourceRow, RouteRow, Series,
                                     WorkloadPage)

WINDOW_S = 60.0  # linkerd viz stat's default --time-window, and its dashboard's
CHART_SPAN_S = 600  # the last ten minutes in the small charts
CHART_STEP_S = 15
CHART_RATE_S = 30  # short enough to show a change within the span, long enough for several scrapes
QUANTILES = (0.5, 0.95, 0.99)


class MeshState:
    """``mesh.json`` of a local mesh, read when it changes: ``demo up`` may start the dashboard before
    it writes the file (last, once all is ready), and rewrites it when it restarts what died."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "mesh.json"
        self._seen: tuple[float, int] | None = None
        self._mesh = None

    def get(self):
        from meshctl.demo import state

        try:
            st = self.path.stat()
        except FileNotFoundError:
            return state.load(self.path.parent)  # raises, naming the file and what to run
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._seen:
            self._mesh, self._seen = state.load(self.path.parent), stamp
        return self._mesh


def golden(row) -> Golden | None:
    """A ``meshctl.viz.queries.StatRow`` as the pages show it (None: no traffic in the window)."""
    if row is None or not row.has_traffic and row.tcp_open_connections is None:
        return None
    return Golden(row.success_rate, row.rps or 0.0, row.latency_ms_p50, row.latency_ms_p95, row.latency_ms_p99,
                  row.tcp_open_connections)


def _workload_href(namespace: str, name: str) -> str:
    return f"/namespaces/{namespace}/deployments/{name}"


class LocalSource:
    """The dashboard's figures over one Prometheus, from ``meshctl.viz.queries`` (viz stat's queries)."""

    def __init__(self, prometheus_url: str, mesh_dir: Path | None = None, *, window_s: float = WINDOW_S,
                 client=None) -> None:
        from meshctl.viz.promclient import PrometheusClient

        self.mesh_state = MeshState(mesh_dir) if mesh_dir is not None else None
        self.window_s = window_s
        self.prom = client or PrometheusClient(prometheus_url)

    @property
    def mesh(self):
        return self.mesh_state.get() if self.mesh_state is not None else None

    def _stat(self, kind: str, name: str | None = None, namespace: str | None = None, *, at: float, **kw) -> list:
        from meshctl.viz import queries
        from meshctl.viz.resources import Resource

        return queries.stat(self.prom, Resource(kind, name, namespace), window_s=self.window_s, at=at, **kw)

    def _identities(self) -> dict[tuple[str, str], str]:
        mesh = self.mesh
        return {} if mesh is None else {(w.namespace, w.name): w.identity for w in mesh.workloads}

    @staticmethod
    def _row(kind: str, r) -> ResourceRow:
        meshed = r.meshed_pods if r.meshed_pods is not None else 0
        total = r.total_pods if r.total_pods is not None else 0
        return ResourceRow(kind, r.namespace, r.name, meshed, total, golden(r))

    # --- pages -------------------------------------------------------------------------

    def overview(self) -> Overview:
        at = time.time()
        with ThreadPoolExecutor(max_workers=2) as pool:
            namespaces_job = pool.submit(self._stat, "namespace", at=at)
            deployments = self._stat("deployment", at=at)
            namespaces = namespaces_job.result()
        # A namespace's MESHED counts its workloads (Linkerd's overview), not its pods.
        per_ns: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for d in deployments:
            per_ns[d.namespace][1] += 1
            per_ns[d.namespace][0] += int(bool(d.total_pods) and d.meshed_pods == d.total_pods)
        return Overview(
            tuple(ResourceRow("namespace", n.name, n.name, *per_ns[n.name], golden(n)) for n in namespaces),
            tuple(self._row("deployment", d) for d in deployments))

    def namespace(self, ns: str) -> NamespacePage:
        at = time.time()
        with ThreadPoolExecutor(max_workers=2) as pool:
            pods_job = pool.submit(self._stat, "pod", namespace=ns, at=at)
            services_job = pool.submit(self._stat, "service", namespace=ns, at=at)
            deployments = self._stat("deployment", namespace=ns, at=at)
            pods, services = pods_job.result(), {r.name: r for r in services_job.result()}
        if not deployments:
            raise LookupError(f"namespace {ns!r} has no meshed workloads")
        mesh = self.mesh
        # Services without callers in the window are still listed where the inventory knows them, and
        # a Service is as meshed as the deployment behind it (the local mesh knows which; else "-").
        backing = {w.service: w.name for w in mesh.workloads if w.namespace == ns and w.service} if mesh else {}
        by_deploy = {d.name: d for d in deployments}
        service_rows = []
        for name in sorted(set(backing) | set(services)):
            d = by_deploy.get(backing.get(name, ""))
            meshed, total = (d.meshed_pods or 0, d.total_pods or 0) if d is not None else (0, 0)
            service_rows.append(ResourceRow("service", ns, name, meshed, total, golden(services.get(name))))
        return NamespacePage(ns, tuple(self._row("deployment", d) for d in deployments),
                             tuple(self._row("pod", p) for p in pods), tuple(service_rows))

    def workload(self, ns: str, name: str) -> WorkloadPage:
        from meshctl.viz import queries
        from meshctl.viz.queries import JOB, matchers
        from meshctl.viz.resources import Resource

        at = time.time()
        res = Resource("deployment", name, ns)
        up = matchers({"job": JOB, "namespace": ns, "deployment": name})
        # The page's queries are independent: run them side by side (each waits on Prometheus, not on
        # the CPU), so the page costs the slowest query group, not their sum.  Who we call and who calls
        # us come with their golden metrics (Linkerd's octopus graph: stat --from/--to), the identities
        # from the connections (viz edges), routes from the ServiceProfiles of our own namespace's
        # services (others, rarer, are asked once the callees are known).
        with ThreadPoolExecutor(max_workers=8) as pool:
            jobs = {
                "me": pool.submit(self._stat, "deployment", name, ns, at=at),
                "callees": pool.submit(self._stat, "deployment", at=at, from_=res, tcp=False),
                "callers": pool.submit(self._stat, "deployment", at=at, to=res, tcp=False),
                "edges": pool.submit(queries.edges, self.prom, "deployment", at=at),
                "routes": pool.submit(self._routes, res, ns, at),
                "served": pool.submit(self._routes, res, None, at),
                "pods": pool.submit(self.prom.query, f"group(up{up}) by (pod)", at=at),
            }
            charts = self._charts(ns, name, at, pool)  # its five range queries, on the same pool
            done = {key: job.result() for key, job in jobs.items()}
        me = done["me"]
        if not me:
            raise LookupError(f"deployment {name!r} not found in namespace {ns!r}")
        identities = self._identities()
        connections, callees, callers = done["edges"], done["callees"], done["callers"]
        out_ids = {(e.dst_namespace, e.dst): e for e in connections if (e.src_namespace, e.src) == (ns, name)}
        in_ids = {(e.src_namespace, e.src): e for e in connections if (e.dst_namespace, e.dst) == (ns, name)}
        my_id = identities.get((ns, name), "")
        outbound = []
        for r in callees:
            e = out_ids.get((r.namespace, r.name))
            server_id = e.server_id if e else identities.get((r.namespace, r.name), "")
            outbound.append(EdgeRow("outbound", r.name, _workload_href(r.namespace, r.name),
                                    r.namespace, my_id, server_id,
                                    e.secured if e else False, r.rps or 0.0, r.success_rate))
        inbound = []
        for r in callers:
            e = in_ids.get((r.namespace, r.name))
            inbound.append(EdgeRow("inbound", r.name, _workload_href(r.namespace, r.name), r.namespace,
                                   identities.get((r.namespace, r.name), ""), my_id, e.secured if e else False,
                                   r.rps or 0.0, r.success_rate))
        routes = list(done["routes"])
        for dst_ns in sorted({r.namespace for r in callees} - {ns}):
            routes += self._routes(res, dst_ns, at)
        pods = tuple(sorted(s.get("pod") for s in done["pods"] if s.get("pod")))
        return WorkloadPage(self._row("deployment", me[0]), my_id, pods, tuple(inbound), tuple(outbound),
                            tuple(routes), charts(), tuple(done["served"]))

    def _routes(self, res, dst_namespace: str | None, at: float) -> list[RouteRow]:
        """Outbound routes of *res* to the services of *dst_namespace* (effective next to actual success),
        or with None its inbound routes (what it served, by its own ServiceProfile)."""
        from meshctl.viz import queries
        from meshctl.viz.resources import Resource

        to = Resource("namespace", dst_namespace) if dst_namespace is not None else None
        return [RouteRow(rr.route, rr.dst, rr.success_rate, rr.rps or 0.0, rr.actual_success_rate,
                         rr.actual_rps if to is not None else None, rr.latency_ms_p50, rr.latency_ms_p95,
                         rr.latency_ms_p99)
                for rr in queries.routes(self.prom, res, window_s=self.window_s, to=to, at=at)
                if rr.requests > 0 or rr.route != queries.DEFAULT_ROUTE]

    def _charts(self, ns: str, name: str, at: float, pool):
        """The last ten minutes of the golden metrics (range queries: the dashboard's own, on viz's matchers).

        The queries are submitted to *pool* now; the returned function waits for them and builds the charts.
        """
        from meshctl.viz.queries import matchers

        sel = matchers({"direction": "inbound", "namespace": ns, "deployment": name})
        ok = matchers({"direction": "inbound", "namespace": ns, "deployment": name, "classification": "success"})
        start, step = at - CHART_SPAN_S, CHART_STEP_S
        w = f"{CHART_RATE_S}s"

        def series(label: str, promql: str, scale: float = 1.0) -> Series:
            found = self.prom.query_range(promql, start=start, end=at, step=step)
            points = found[0].points if found else ()
            return Series(label, tuple((t, None if math.isnan(v) else v * scale) for t, v in points))

        success = pool.submit(series, "success",
                              f"sum(rate(response_total{ok}[{w}])) / sum(rate(response_total{sel}[{w}]))", 100.0)
        rps = pool.submit(series, "rps", f"sum(rate(response_total{sel}[{w}]))")
        latency = [pool.submit(series, f"p{round(q * 100)}",
                               f"histogram_quantile({q}, sum(rate(response_latency_ms_bucket{sel}[{w}])) by (le))")
                   for q in QUANTILES]

        def charts() -> tuple[Chart, ...]:
            return (Chart("Success rate", "%", (success.result(),)), Chart("Requests per second", "rps", (rps.result(),)),
                    Chart("Latency", "ms", tuple(f.result() for f in latency)))

        return charts

    # --- live calls ----------------------------------------------------------------------

    def tap(self, ns: str, name: str):
        from meshctl.dashboard import live
        from meshctl.errors import MeshctlError

        mesh = self.mesh
        if mesh is None:
            # No local mesh: a cluster's, through its tap server, when there is a cluster to ask (the web
            # pod's in-cluster configuration, or a kubeconfig).
            from meshctl import k8s

            try:
                cluster = k8s.Cluster()
            except MeshctlError:
                async def refused():
                    raise MeshctlError("live calls need the local mesh's state (mesh.json: the proxies' tap "
                                       "addresses and credentials) or a cluster with the viz extension; start the "
                                       "local mesh with meshctl demo up, or give --dir")
                    yield  # pragma: no cover - makes this an async generator
                return refused()
            return live.cluster_calls(cluster, ns, name)
        return live.local_calls(mesh, ns, name)
