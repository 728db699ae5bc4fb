"""``meshctl upgrade``: re-render the installed control plane, keeping its
trust anchor, issuer and webhook certificate, and the values it was installed with."""

from __future__ import annotations

from typing import List, Optional

import typer

from meshctl.cli import _common
from meshctl.cli.install import (
    ImagePullPolicyOption,
    IssuerCertificateFileOption,
    IssuerKeyFileOption,
    TrustAnchorsFileOption,
    check_mesh_namespace,
    emit,
    flag_values,
)


def register(app: typer.Typer) -> None:
    @app.command("upgrade")
    def upgrade(
        ctx: typer.Context,
        crds: bool = typer.Option(False, "--crds", help="Render the CustomResourceDefinitions."),
        ha: bool = typer.Option(False, "--ha", help="High availability: 3 replicas, anti-affinity, PodDisruptionBudgets."),
        sets: List[str] = typer.Option([], "--set", help="Override a value: KEY=VALUE (repeatable)."),
        files: List[str] = typer.Option([], "--values", "-f", help="Values file (repeatable; later ones win)."),
        trust_anchors_file: Optional[str] = TrustAnchorsFileOption,
        issuer_certificate_file: Optional[str] = IssuerCertificateFileOption,
        issuer_key_file: Optional[str] = IssuerKeyFileOption,
        image_pull_policy: Optional[str] = ImagePullPolicyOption,
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
    ) -> None:
        """Render the upgraded control plane for `kubectl apply -f -` (certificates kept)."""
        from meshctl import install as core
        from meshctl import k8s
        from meshctl.errors import ClusterError
        from meshctl.meshconfig import CONFIG_MAP_NAME

        opts = _common.global_options(ctx)
        if crds:
            objs = core.render_crds()
        else:
            ns = check_mesh_namespace(opts.mesh_namespace)
            flags, sources = flag_values(trust_anchors_file=trust_anchors_file,
                                         issuer_certificate_file=issuer_certificate_file,
                                         issuer_key_file=issuer_key_file, image_pull_policy=image_pull_policy)
            # Flags checked before the cluster is asked anything: a typo fails fast and offline.
            core.install_values(ha=ha, files=files, sets=sets, flags=flags)
            cluster = k8s.Cluster.from_options(opts)
            config = cluster.get("v1", "configmaps", CONFIG_MAP_NAME, namespace=ns)
            if config is None:
                raise ClusterError(f"configmap {ns}/{CONFIG_MAP_NAME} not found: meshctl is not installed "
                                   "(use `meshctl install`)")
            existing = core.existing_from_objects(
                config_data=config.get("data") or {},
                issuer_secret=cluster.get("v1", "secrets", core.ISSUER_SECRET, namespace=ns),
                webhook_secret=cluster.get("v1", "secrets", core.WEBHOOK_SECRET, namespace=ns),
                webhook_config=cluster.get("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations",
                                           core.WEBHOOK_CONFIG))
            if not existing.issuer_crt_pem and "identity.issuerCrtPEM" not in flags:
                raise ClusterError(f"secret {ns}/{core.ISSUER_SECRET} not found or empty: cannot keep the issuer "
                                   "(give --identity-trust-anchors-file, --identity-issuer-certificate-file and "
                                   "--identity-issuer-key-file)")
            values = core.install_values(ha=ha, files=files, sets=sets, existing=existing, flags=flags)
            certificates = core.make_certificates(values, namespace=ns, sources=sources)
            objs = core.render_control_plane(values, namespace=ns, certificates=certificates)
        emit(objs, output)
