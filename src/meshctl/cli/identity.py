"""``meshctl identity``: make a trust anchor and issuer, show a workload's certificate, run the identity service."""

from __future__ import annotations

import enum
from typing import Optional

import typer

from meshctl.cli import _common


class ShowFormat(str, enum.Enum):
    text = "text"
    json = "json"
    pem = "pem"


def _duration(raw: str, flag: str):
    import datetime as dt

    from meshctl.errors import UsageError
    from meshctl_proxy.config import parse_duration

    try:
        return dt.timedelta(seconds=parse_duration(raw))
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def register(app: typer.Typer) -> None:
    sub = typer.Typer(name="identity", no_args_is_help=True,
                      help="Workload identity: trust anchors, issuers, certificates and the identity service.")
    app.add_typer(sub)

    @sub.command("create")
    def create(
        ctx: typer.Context,
        out_dir: str = typer.Option(".", "--out-dir", "-o", help="Directory for ca.crt, ca.key, issuer.crt, issuer.key."),
        trust_domain: str = typer.Option("cluster.local", "--trust-domain", help="Trust domain named in the certificates."),
        anchor_lifetime: str = typer.Option("87600h", "--anchor-lifetime", help="Trust anchor lifetime (default 10 years)."),
        issuer_lifetime: str = typer.Option("8760h", "--issuer-lifetime", help="Issuer lifetime (default 1 year)."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    ) -> None:
        """Create a trust anchor and an issuer signed by it, for `meshctl install --identity-*-file`."""
        from meshctl.identity import files

        written = files.create_anchor_and_issuer(
            out_dir, trust_domain=trust_domain, anchor_lifetime=_duration(anchor_lifetime, "--anchor-lifetime"),
            issuer_lifetime=_duration(issuer_lifetime, "--issuer-lifetime"), force=force)
        for path in written:
            _common.report(f"wrote {path}")
        _common.report("install with: meshctl install --identity-trust-anchors-file "
                       f"{written[0]} --identity-issuer-certificate-file {written[2]} --identity-issuer-key-file {written[3]}")

    @sub.command("show")
    def show(
        file: Optional[str] = typer.Option(None, "--file", "-f", help="A PEM certificate (chain) file, e.g. the proxy's certificate.crt."),
        admin: Optional[str] = typer.Option(None, "--admin", help="A proxy's admin address HOST:PORT (reads /identity)."),
        output: ShowFormat = typer.Option(ShowFormat.text, "--output", "-O", help="text, json or pem."),
    ) -> None:
        """Show a workload's certificate: its identity, issuer and validity."""
        from meshctl.errors import UsageError
        from meshctl.identity import files

        if (file is None) == (admin is None):
            raise UsageError("give exactly one of --file or --admin")
        pem, source = files.fetch_certificate(file=file, admin=admin)
        if output is ShowFormat.pem:
            print(pem, end="" if pem.endswith("\n") else "\n")
            return
        print(files.render_chain(pem, source=source, as_json=output is ShowFormat.json))

    @sub.command("token")
    def token(
        registry: str = typer.Option(..., "--registry", help="The local token registry file (created if missing)."),
        namespace: str = typer.Option(..., "--namespace", "-n", help="The ServiceAccount's namespace."),
        service_account: str = typer.Option("default", "--service-account", "-s", help="The ServiceAccount."),
        ttl: str = typer.Option("24h", "--ttl", help="How long the token is valid."),
    ) -> None:
        """Mint a token into a local registry (for the demo and tests; a cluster uses projected tokens)."""
        from meshctl.identity.tokens import add_token

        print(add_token(registry, namespace=namespace, service_account=service_account, ttl=_duration(ttl, "--ttl")))

    @sub.command("serve")
    def serve(
        ctx: typer.Context,
        trust_anchors_file: str = typer.Option(..., "--trust-anchors-file", help="PEM trust anchors."),
        issuer_certificate_file: str = typer.Option(..., "--issuer-certificate-file", help="PEM issuer certificate."),
        issuer_key_file: str = typer.Option(..., "--issuer-key-file", help="PEM issuer key."),
        token_registry: Optional[str] = typer.Option(
            None, "--token-registry", help="Review tokens against this local registry file (demo, tests); "
                                           "without it, the Kubernetes TokenReview API is used."),
        listen: str = typer.Option("0.0.0.0:8080", "--listen", help="HOST:PORT to serve on."),
        trust_domain: str = typer.Option("cluster.local", "--trust-domain", help="The mesh's trust domain."),
        leaf_lifetime: str = typer.Option("24h", "--leaf-lifetime", help="Lifetime of the certificates issued."),
        clock_skew: str = typer.Option("20s", "--clock-skew-allowance", help="Backdating of issued certificates."),
        burst: int = typer.Option(50, "--rate-burst", help="Certificates one identity may get at once."),
        per_second: float = typer.Option(5.0, "--rate-per-second", help="Sustained certificates per second per identity."),
    ) -> None:
        """Run the identity service: sign proxies' CSRs after reviewing their ServiceAccount tokens."""
        from meshctl.identity import files

        opts = _common.global_options(ctx)
        files.serve_from_files(
            trust_anchors_file=trust_anchors_file, issuer_certificate_file=issuer_certificate_file,
            issuer_key_file=issuer_key_file, token_registry=token_registry, listen=listen,
            mesh_namespace=opts.mesh_namespace, trust_domain=trust_domain,
            leaf_lifetime=_duration(leaf_lifetime, "--leaf-lifetime"),
            clock_skew=_duration(clock_skew, "--clock-skew-allowance"), burst=burst, per_second=per_second,
            kube=opts, report=_common.report)
