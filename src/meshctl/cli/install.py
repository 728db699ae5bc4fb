"""``meshctl install``: render the CRDs (``--crds``) or the control plane."""

from __future__ import annotations

from typing import List, Optional

import typer

from meshctl.cli import _common

_CRDS_FIRST = "the meshctl CRDs are not installed: run `meshctl install --crds | kubectl apply -f -` first"


def register(app: typer.Typer) -> None:
    @app.command("install")
    def install(
        ctx: typer.Context,
        crds: bool = typer.Option(False, "--crds", help="Render the CustomResourceDefinitions (apply them first)."),
        ha: bool = typer.Option(False, "--ha", help="High availability: 3 replicas, anti-affinity, PodDisruptionBudgets."),
        sets: List[str] = typer.Option([], "--set", help="Override a value: KEY=VALUE (repeatable; see manifests/values.yaml)."),
        files: List[str] = typer.Option([], "--values", "-f", help="Values file (repeatable; later ones win)."),
        ignore_cluster: bool = typer.Option(False, "--ignore-cluster", help="Render without checking the cluster for an existing install."),
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
    ) -> None:
        """Render the control plane for `kubectl apply -f -`."""
        from meshctl import install as core

        opts = _common.global_options(ctx)
        if crds:
            objs = core.render_crds()
        else:
            values = core.install_values(ha=ha, files=files, sets=sets)
            if not ignore_cluster:
                _refuse_existing(opts)
            certificates = core.make_certificates(values, namespace=opts.mesh_namespace)
            objs = core.render_control_plane(values, namespace=opts.mesh_namespace, certificates=certificates)
        emit(objs, output)


def emit(objs: list[dict], output: _common.OutputFormat) -> None:
    from meshctl import install as core

    print(core.to_json(objs) if output == _common.OutputFormat.json else core.to_yaml(objs), end="")


def _refuse_existing(opts) -> None:
    from meshctl import k8s
    from meshctl.errors import ClusterError
    from meshctl.meshconfig import CONFIG_MAP_NAME

    try:
        cluster = k8s.Cluster.from_options(opts)
        existing = cluster.get("v1", "configmaps", CONFIG_MAP_NAME, namespace=opts.mesh_namespace)
        crd = cluster.get("apiextensions.k8s.io/v1", "customresourcedefinitions", "serviceprofiles.meshctl.io")
    except ClusterError as exc:
        raise ClusterError(f"{exc} (use --ignore-cluster to render without checking the cluster)") from None
    if existing is not None:
        raise ClusterError(f"meshctl is already installed in namespace {opts.mesh_namespace!r}: use `meshctl upgrade` "
                           "to change it (or `meshctl uninstall | kubectl delete -f -` first)")
    if crd is None:
        raise ClusterError(_CRDS_FIRST)
