"""``meshctl version``: client version, and the control plane's when reachable."""

from __future__ import annotations

import typer

from meshctl.cli import _common


def register(app: typer.Typer) -> None:
    @app.command("version")
    def version(
        ctx: typer.Context,
        client: bool = typer.Option(False, "--client", help="Print the client version only (no cluster needed)."),
        short: bool = typer.Option(False, "--short", help="Print the version numbers only."),
    ) -> None:
        """Print the client and server version information."""
        from meshctl import __version__

        print(__version__ if short else f"Client version: {__version__}")
        if client:
            return
        from meshctl import k8s
        from meshctl.errors import ClusterError

        opts = _common.global_options(ctx)
        try:
            server = k8s.control_plane_version(opts)
        except k8s.KubeconfigError:
            raise  # no kubeconfig to use is an error, as in linkerd
        except ClusterError as exc:
            # A cluster that does not answer, or no mesh in it: linkerd prints
            # "Server version: unavailable" and succeeds; the reason with --verbose.
            if opts.verbose:
                _common.report(f"server version unavailable: {exc}")
            server = ""
        print((server or "unavailable") if short else f"Server version: {server or 'unavailable'}")
