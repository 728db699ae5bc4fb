"""``meshctl viz install | uninstall | check``: the viz extension in a cluster (linkerd viz's)."""

from __future__ import annotations

from typing import List

import typer

from meshctl.cli import _common


def register(app: typer.Typer) -> None:
    """Nothing on the root: these are ``meshctl viz`` commands (see :func:`register_viz`)."""


def register_viz(viz: typer.Typer) -> None:
    @viz.command("install")
    def install(
        ctx: typer.Context,
        sets: List[str] = typer.Option([], "--set", help="Override a value: KEY=VALUE (repeatable; see "
                                                         "manifests/viz/values.yaml), e.g. grafanaUrl=https://..."),
        files: List[str] = typer.Option([], "--values", "-f", help="Values file (repeatable; later ones win)."),
        ignore_cluster: bool = typer.Option(False, "--ignore-cluster",
                                            help="Render without checking that meshctl is installed."),
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
    ) -> None:
        """Render the viz extension (Prometheus, tap identity, dashboard) for `kubectl apply -f -`."""
        from meshctl.cli.install import emit
        from meshctl.viz import install as core
        from meshctl_proxy.config import VIZ_NAMESPACE

        opts = _common.global_options(ctx)
        values = core.build_values(files=files, sets=sets)
        if not ignore_cluster:
            from meshctl import k8s
            from meshctl.errors import ClusterError

            try:
                mesh = k8s.read_mesh_config(opts)
            except ClusterError as exc:
                raise ClusterError(f"{exc} (viz extends an installed mesh; use --ignore-cluster to render "
                                   "anyway)") from None
            values["clusterDomain"] = values["clusterDomain"] if any(s.startswith("clusterDomain=") for s in sets) \
                else mesh.cluster_domain
        emit(core.render(values, namespace=VIZ_NAMESPACE, mesh_namespace=opts.mesh_namespace), output)

    @viz.command("uninstall")
    def uninstall(
        ctx: typer.Context,
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
    ) -> None:
        """Print the viz extension's objects for `kubectl delete -f -`."""
        from meshctl import install as mesh_install
        from meshctl import k8s
        from meshctl.cli.install import emit
        from meshctl.errors import MeshctlError
        from meshctl.viz import install as core

        cluster = k8s.Cluster.from_options(_common.global_options(ctx))
        found = []
        try:
            for api_version, plural, kind in core.UNINSTALL_KINDS:
                items = cluster.list(api_version, plural,
                                     label_selector=f"{core.EXTENSION_LABEL}={core.EXTENSION}")["items"]
                found += [{**obj, "apiVersion": api_version, "kind": kind} for obj in items]
        finally:
            cluster.close()
        if not found:
            raise MeshctlError(f"the viz extension is not installed (nothing labelled "
                               f"{core.EXTENSION_LABEL}={core.EXTENSION})")
        emit(mesh_install.uninstall_objects(found), output)

    @viz.command("check")
    def check(
        ctx: typer.Context,
        wait: str = typer.Option("5m", "--wait", help="How long to retry checks that may still converge."),
        output: str = typer.Option("table", "--output", "-o", help="table, json or short."),
        fail_on_warning: bool = typer.Option(False, "--fail-on-warning", help="Exit 1 on warnings too."),
    ) -> None:
        """Check the viz extension: its objects, its pods, Prometheus answering and scraping proxies."""
        import time

        from meshctl import k8s
        from meshctl.cli.check import CheckOutput, run_checks
        from meshctl.errors import UsageError
        from meshctl.healthcheck import checks
        from meshctl.viz import checks as viz_checks
        from meshctl_proxy.config import parse_duration

        try:
            wait_s = parse_duration(wait)
        except ValueError as exc:
            raise UsageError(f"--wait: {exc}") from None
        try:
            fmt = CheckOutput(output)
        except ValueError:
            raise UsageError(f"--output: expected table, json or short, got {output!r}") from None
        opts = _common.global_options(ctx)
        attempt_timeout = max(2.0, min(10.0, wait_s))
        k8s.preload()
        facts = viz_checks.VizFacts(kubeconfig=opts.kubeconfig, context=opts.context,
                                    mesh_namespace=opts.mesh_namespace, request_timeout=attempt_timeout)
        # linkerd viz check starts with the API checks: nothing else means anything without them.
        run_checks([checks.KUBERNETES_API, *viz_checks.categories()], facts, output=fmt,
                   deadline=time.monotonic() + wait_s, attempt_timeout=attempt_timeout,
                   fail_on_warning=fail_on_warning)

