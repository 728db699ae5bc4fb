"""``meshctl viz``: the observability extension's commands, as ``linkerd viz``.

A typer sub-app.  Its other commands live in modules named ``viz_*.py`` beside this
one (``viz_tap.py``: tap, top, profile --tap; ``viz_install.py``: install, uninstall,
check), each exposing ``register_viz(viz_app)`` (and a no-op ``register(app)`` for the
root's loop): adding a viz command is adding a file.

``stat``, ``routes`` and ``edges`` read golden metrics from a Prometheus:
``--prometheus-url``; else, in a cluster (:func:`reads_cluster`), the viz
Prometheus through the Kubernetes API server's service proxy (as ``linkerd viz``
reaches it); else the local mesh of ``meshctl demo up`` (its ``mesh.json``).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import List, Optional

import typer

from meshctl.cli import _common

viz_app = typer.Typer(
    name="viz",
    help="Watch the mesh: golden metrics per workload, route and edge, from Prometheus (linkerd viz).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PROMETHEUS_SERVICE = "prometheus"  # manifests/viz: the Service `viz install` creates
PROMETHEUS_PORT = 9090


class VizOutput(str, enum.Enum):
    table = "table"
    wide = "wide"
    json = "json"


class MetricsSource:
    """Where the metrics come from, and what else that place knows (the workloads' identities)."""

    def __init__(self, client, *, default_namespace: str, identities: dict[tuple[str, str], str] | None = None):
        self.client = client
        self.default_namespace = default_namespace
        self.identities = identities or {}

    def identity_of(self, namespace: str, pod: str) -> str | None:
        return self.identities.get((namespace, pod))

    def close(self) -> None:
        self.client.close()


def reads_cluster(opts, demo_dir: str | None) -> bool:
    """Whether a viz command (stat, routes, edges, tap, top, dashboard) reads a cluster, else the local mesh.

    What is named wins over what is merely found: ``--demo-dir`` or ``$MESHCTL_DEMO_DIR``
    names the local mesh; ``--kubeconfig``, ``--context`` or ``$KUBECONFIG`` names a cluster.
    Otherwise a local mesh that is up (its ``mesh.json`` in the default state directory)
    wins over a kubeconfig that is only there (``~/.kube/config``, or running in a pod):
    ``meshctl demo up`` then ``meshctl viz stat`` must show the demo on a laptop that also
    has a cluster configured (docs/walkthrough.md says they find the local mesh themselves).
    """
    from meshctl.demo import state

    if demo_dir or os.environ.get(state.ENV_DIR):
        return False
    if opts.kubeconfig or opts.context or os.environ.get("KUBECONFIG"):
        return True
    if (state.state_dir() / state.STATE_FILE).is_file():
        return False
    return (Path.home() / ".kube" / "config").is_file() or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def metrics_source(ctx: typer.Context, prometheus_url: str | None, demo_dir: str | None) -> MetricsSource:
    """``--prometheus-url``, else the cluster's viz Prometheus, else the local mesh's."""
    from meshctl.viz.promclient import PrometheusClient

    opts = _common.global_options(ctx)
    if prometheus_url:
        source = MetricsSource(PrometheusClient(prometheus_url), default_namespace="default")
        _add_local_identities(source, demo_dir, prometheus_url)
        return source
    if reads_cluster(opts, demo_dir):
        from meshctl import k8s

        from meshctl_proxy.config import VIZ_NAMESPACE

        cluster = k8s.Cluster.from_options(opts)
        transport, url = k8s.service_proxy(cluster, VIZ_NAMESPACE, PROMETHEUS_SERVICE, PROMETHEUS_PORT)
        client = PrometheusClient("http://prometheus.service-proxy", transport=transport, display_url=url)
        return _ClusterSource(client, cluster, opts)
    from meshctl.demo import state

    mesh = state.load(demo_dir)
    source = MetricsSource(PrometheusClient(mesh.prometheus_url), default_namespace=mesh.namespace)
    source.identities = {(w.namespace, w.pod): w.identity for w in mesh.workloads}
    return source


def _add_local_identities(source: MetricsSource, demo_dir: str | None, url: str) -> None:
    # The local mesh knows its workloads' identities; use them when it is the Prometheus asked.
    from meshctl.demo import state
    from meshctl.errors import MeshctlError

    try:
        mesh = state.load(demo_dir)
    except MeshctlError:
        return
    if mesh.prometheus_url.rstrip("/") == url.rstrip("/"):
        source.default_namespace = mesh.namespace
        source.identities = {(w.namespace, w.pod): w.identity for w in mesh.workloads}


class _ClusterSource(MetricsSource):
    """The viz Prometheus of a cluster; client identities from the pods' ServiceAccounts, as Linkerd's."""

    def __init__(self, client, cluster, opts):
        super().__init__(client, default_namespace="default")
        self.cluster = cluster
        self.opts = opts
        self._mesh = None

    def identity_of(self, namespace: str, pod: str) -> str | None:
        from meshctl import k8s
        from meshctl.errors import MeshctlError

        try:
            obj = self.cluster.get("v1", "pods", pod, namespace=namespace)
            if obj is None:
                return None
            if self._mesh is None:
                self._mesh = k8s.read_mesh_config(self.opts)
        except MeshctlError:
            return None
        sa = (obj.get("spec") or {}).get("serviceAccountName") or "default"
        return self._mesh.identity_name(sa, namespace)

    def close(self) -> None:
        super().close()
        self.cluster.close()


# Options shared by stat, routes and edges (linkerd's names).
NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Namespace of the resources (default: the local mesh's, "
                                                             "else 'default').")
AllNamespacesOpt = typer.Option(False, "--all-namespaces", "-A", help="Every namespace, ignoring --namespace.")
WindowOpt = typer.Option("1m", "--time-window", "-t", help="Window of the stats (Go duration, at least 15s).")
SelectorOpt = typer.Option(None, "--selector", "-l", help="Label selector on the pods' labels (app=web,tier!=db).")
OutputOpt = typer.Option(VizOutput.table, "--output", "-o", help="table, wide or json.")
PrometheusOpt = typer.Option(None, "--prometheus-url", envvar="MESHCTL_PROMETHEUS_URL",
                             help="Read metrics from this Prometheus instead of the cluster's or the local mesh's.")
DemoDirOpt = typer.Option(None, "--demo-dir", help="State directory of the local mesh (meshctl demo up --dir).")


def _emit_json(data) -> None:
    import json

    print(json.dumps(data, indent=2))


def register(app: typer.Typer) -> None:
    import importlib
    import pkgutil

    import meshctl.cli as cli_package

    app.add_typer(viz_app, name="viz")
    for info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda i: i.name):
        if info.name.startswith("viz_"):
            importlib.import_module(f"meshctl.cli.{info.name}").register_viz(viz_app)


@viz_app.command("stat")
def stat(
    ctx: typer.Context,
    resources: List[str] = typer.Argument(..., metavar="(RESOURCE)...",
                                          help="deploy, deploy/web, po, ns, svc, au, all..."),
    namespace: Optional[str] = NamespaceOpt,
    all_namespaces: bool = AllNamespacesOpt,
    time_window: str = WindowOpt,
    selector: Optional[str] = SelectorOpt,
    to: Optional[str] = typer.Option(None, "--to", help="Only traffic to this resource (TYPE/NAME)."),
    to_namespace: Optional[str] = typer.Option(None, "--to-namespace", help="Namespace of --to (default: -n's)."),
    from_: Optional[str] = typer.Option(None, "--from", help="Only traffic from this resource (TYPE/NAME)."),
    from_namespace: Optional[str] = typer.Option(None, "--from-namespace", help="Namespace of --from (default: -n's)."),
    output: VizOutput = OutputOpt,
    prometheus_url: Optional[str] = PrometheusOpt,
    demo_dir: Optional[str] = DemoDirOpt,
) -> None:
    """Success rate, RPS, latency and TCP per resource over a time window (linkerd viz stat)."""
    from meshctl.viz import queries, resources as res, tables

    window_s = res.parse_window(time_window)
    source = metrics_source(ctx, prometheus_url, demo_dir)
    try:
        ns = None if all_namespaces else (namespace or source.default_namespace)
        targets = res.parse(resources, ns)
        to_res = res.parse_one(to, to_namespace or ns or source.default_namespace, flag="--to") if to else None
        from_res = (res.parse_one(from_, from_namespace or ns or source.default_namespace, flag="--from")
                    if from_ else None)
        rows = []
        for target in targets:
            rows += queries.stat(source.client, target, window_s=window_s, to=to_res, from_=from_res,
                                 selector=selector)
        if any(t.name for t in targets):
            wanted = {(t.kind, t.name) for t in targets}
            rows = [r for r in rows if (r.kind, r.name) in wanted or (r.kind, None) in wanted]
    finally:
        source.close()
    if output == VizOutput.json:
        _emit_json(tables.stat_json(rows))
        return
    if not rows:
        _common.report("No traffic found.")
        return
    print(tables.stat_table(rows, wide=output == VizOutput.wide, all_namespaces=all_namespaces), end="")


@viz_app.command("routes")
def routes(
    ctx: typer.Context,
    resource: Optional[str] = typer.Argument(None, metavar="[RESOURCE]",
                                             help="deploy/web, deploy, svc/web... (default: every deployment)."),
    namespace: Optional[str] = NamespaceOpt,
    time_window: str = WindowOpt,
    selector: Optional[str] = SelectorOpt,
    to: Optional[str] = typer.Option(None, "--to", help="Outbound routes to this resource (svc/NAME, au/HOST:PORT, "
                                                        "deploy/NAME); -o wide then shows actual success."),
    to_namespace: Optional[str] = typer.Option(None, "--to-namespace", help="Namespace of --to (default: -n's)."),
    output: VizOutput = OutputOpt,
    prometheus_url: Optional[str] = PrometheusOpt,
    demo_dir: Optional[str] = DemoDirOpt,
) -> None:
    """Success rate, RPS and latency per ServiceProfile route (linkerd viz routes)."""
    from meshctl.viz import queries, resources as res, tables

    window_s = res.parse_window(time_window)
    source = metrics_source(ctx, prometheus_url, demo_dir)
    try:
        ns = namespace or source.default_namespace
        (target,) = res.parse([resource or "deploy"], ns)[:1]
        to_res = res.parse_one(to, to_namespace or ns, flag="--to") if to else None
        rows = queries.routes(source.client, target, window_s=window_s, to=to_res, selector=selector)
    finally:
        source.close()
    # linkerd shows effective/actual columns only for outbound (--to) queries.
    wide = output == VizOutput.wide and to_res is not None
    if output == VizOutput.json:
        _emit_json(tables.routes_json(rows, wide=to_res is not None))
        return
    if not any(r.requests for r in rows):
        _common.report("No traffic found.")
        return
    print(tables.routes_table(rows, wide=wide), end="")


@viz_app.command("edges")
def edges(
    ctx: typer.Context,
    resource_type: str = typer.Argument(..., metavar="RESOURCETYPE", help="deploy, po, sts, ds, job..."),
    namespace: Optional[str] = NamespaceOpt,
    all_namespaces: bool = AllNamespacesOpt,
    output: VizOutput = OutputOpt,
    prometheus_url: Optional[str] = PrometheusOpt,
    demo_dir: Optional[str] = DemoDirOpt,
) -> None:
    """Connections between resources, and the identities mTLS proved (linkerd viz edges)."""
    from meshctl.errors import UsageError
    from meshctl.viz import queries, resources as res, tables

    if "/" in resource_type:
        raise UsageError(f"edges cannot be returned for a specific resource name; remove "
                         f"{resource_type.partition('/')[2]!r} from the query")
    kind = res.kind_of(resource_type)
    source = metrics_source(ctx, prometheus_url, demo_dir)
    try:
        ns = None if all_namespaces else (namespace or source.default_namespace)
        rows = queries.edges(source.client, kind, namespace=ns, identity_of=source.identity_of)
    finally:
        source.close()
    if output == VizOutput.json:
        _emit_json(tables.edges_json(rows))
        return
    if not rows:
        _common.report("No edges found.")
        return
    print(tables.edges_table(rows, wide=output == VizOutput.wide), end="")
