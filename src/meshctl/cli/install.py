"""``meshctl install``: render the CRDs (``--crds``) or the control plane."""

from __future__ import annotations

from typing import List, Optional

import typer

from meshctl.cli import _common

_CRDS_FIRST = "the meshctl CRDs are not installed: run `meshctl install --crds | kubectl apply -f -` first"

# linkerd install's identity flags (`meshctl identity create` prints them): the files' PEM
# becomes the identity.* values; all three go together.
_IDENTITY_FILES = (("--identity-trust-anchors-file", "identity.trustAnchorsPEM"),
                   ("--identity-issuer-certificate-file", "identity.issuerCrtPEM"),
                   ("--identity-issuer-key-file", "identity.issuerKeyPEM"))
TrustAnchorsFileOption = typer.Option(None, "--identity-trust-anchors-file", metavar="FILE",
                                      help="PEM trust anchors of the mesh (with the issuer's two files).")
IssuerCertificateFileOption = typer.Option(None, "--identity-issuer-certificate-file", metavar="FILE",
                                           help="PEM issuer certificate, signed by the trust anchors.")
IssuerKeyFileOption = typer.Option(None, "--identity-issuer-key-file", metavar="FILE",
                                   help="PEM private key of the issuer certificate.")
ImagePullPolicyOption = typer.Option(None, "--image-pull-policy", metavar="POLICY",
                                     help="Pull policy of the control plane's images: Always, IfNotPresent or Never.")


def flag_values(*, trust_anchors_file, issuer_certificate_file, issuer_key_file, image_pull_policy):
    """(values set by flags as ``{path: (flag, value)}``, ``{path: file}`` for the certificate errors)."""
    from meshctl.errors import InputError

    flags: dict[str, tuple[str, object]] = {}
    sources: dict[str, str] = {}
    for (flag, path), file in zip(_IDENTITY_FILES, (trust_anchors_file, issuer_certificate_file, issuer_key_file)):
        if file is None:
            continue
        try:
            with open(file, encoding="utf-8") as fh:
                pem = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{flag} {file}: {getattr(exc, 'strerror', None) or exc}") from None
        flags[path] = (flag, pem)
        sources[path] = file
    if image_pull_policy is not None:
        flags["image.pullPolicy"] = ("--image-pull-policy", image_pull_policy)
    return flags, sources


def check_mesh_namespace(namespace: str) -> str:
    from meshctl import kubevalues

    return kubevalues.check_namespace(namespace, flag="-L/--mesh-namespace")


def register(app: typer.Typer) -> None:
    @app.command("install")
    def install(
        ctx: typer.Context,
        crds: bool = typer.Option(False, "--crds", help="Render the CustomResourceDefinitions (apply them first)."),
        ha: bool = typer.Option(False, "--ha", help="High availability: 3 replicas, anti-affinity, PodDisruptionBudgets."),
        sets: List[str] = typer.Option([], "--set", help="Override a value: KEY=VALUE (repeatable; see manifests/values.yaml)."),
        files: List[str] = typer.Option([], "--values", "-f", help="Values file (repeatable; later ones win)."),
        ignore_cluster: bool = typer.Option(False, "--ignore-cluster", help="Render without checking the cluster for an existing install."),
        trust_anchors_file: Optional[str] = TrustAnchorsFileOption,
        issuer_certificate_file: Optional[str] = IssuerCertificateFileOption,
        issuer_key_file: Optional[str] = IssuerKeyFileOption,
        image_pull_policy: Optional[str] = ImagePullPolicyOption,
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
    ) -> None:
        """Render the control plane for `kubectl apply -f -`."""
        from meshctl import install as core

        opts = _common.global_options(ctx)
        if crds:
            objs = core.render_crds()
        else:
            check_mesh_namespace(opts.mesh_namespace)
            flags, sources = flag_values(trust_anchors_file=trust_anchors_file,
                                         issuer_certificate_file=issuer_certificate_file,
                                         issuer_key_file=issuer_key_file, image_pull_policy=image_pull_policy)
            values = core.install_values(ha=ha, files=files, sets=sets, flags=flags)
            if not ignore_cluster:
                _refuse_existing(opts)
            certificates = core.make_certificates(values, namespace=opts.mesh_namespace, sources=sources)
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
