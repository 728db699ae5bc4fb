"""``meshctl uninstall``: list what install created, for `kubectl delete -f -`."""

from __future__ import annotations

import typer

from meshctl.cli import _common
from meshctl.cli.install import emit


def register(app: typer.Typer) -> None:
    @app.command("uninstall")
    def uninstall(
        ctx: typer.Context,
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
    ) -> None:
        """Render every object of the installed control plane, and the CRDs, for `kubectl delete -f -`."""
        from meshctl import install as core
        from meshctl import k8s

        opts = _common.global_options(ctx)
        ns = opts.mesh_namespace
        cluster = k8s.Cluster.from_options(opts)
        selector = f"{core.CONTROL_PLANE_NS_LABEL}={ns}"
        found = []
        for api_version, plural, kind, namespaced in core.INSTALLED_KINDS:
            listed = cluster.list(api_version, plural, namespace=ns if namespaced else "", label_selector=selector)
            for item in listed["items"]:
                found.append({**item, "apiVersion": api_version, "kind": kind})
        namespace = cluster.get("v1", "namespaces", ns)
        if namespace is not None:
            found.append(namespace)
        for crd in core.render_crds():
            if cluster.get("apiextensions.k8s.io/v1", "customresourcedefinitions", crd["metadata"]["name"]):
                found.append(crd)
        if not found:
            _common.report(f"meshctl is not installed in namespace {ns!r}: nothing to uninstall")
        objs = core.uninstall_objects(found)
        emit(objs, output)
