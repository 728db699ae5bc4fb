"""``meshctl dashboard``: the web dashboard, served here over a local mesh or reached in a cluster."""

from __future__ import annotations

import enum
from typing import Optional

import typer


class Show(str, enum.Enum):
    meshctl = "meshctl"
    grafana = "grafana"
    url = "url"


DEFAULT_PORT = 50750  # linkerd dashboard's default


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def dashboard(
        ctx: typer.Context,
        address: str = typer.Option("127.0.0.1", "--address", help="Address to serve on (loopback by default; the Host check follows it)."),
        port: int = typer.Option(DEFAULT_PORT, "--port", "-p", min=0, max=65535, help="Local port to serve on (0: any free port)."),
        show: Show = typer.Option(Show.meshctl, "--show", help="Open the meshctl dashboard or Grafana in a browser, or only print the URLs (url)."),
        wait: str = typer.Option("5m", "--wait", help="How long to wait for the dashboard's backends to become available."),
        prometheus_url: Optional[str] = typer.Option(None, "--prometheus-url", help="Serve the dashboard here over this Prometheus (no cluster needed)."),
        grafana_url: Optional[str] = typer.Option(None, "--grafana-url", help="Grafana to link each workload to (its meshctl dashboards)."),
        demo_dir: Optional[str] = typer.Option(None, "--demo-dir", help="State directory of the local mesh (meshctl demo up --dir); default $MESHCTL_DEMO_DIR, else ~/.local/state/meshctl/demo."),
        enforced_host: Optional[str] = typer.Option(None, "--enforced-host", help="Regular expression the Host header must match (default: the address served)."),
    ) -> None:
        """Open the dashboard: golden metrics, dependency map, live calls and route metrics per workload.

        With --prometheus-url or --demo-dir, or without a kubeconfig, the dashboard is served by
        this process over that Prometheus and the local mesh of `meshctl demo up`; otherwise it is
        reached in the cluster through a port-forward to the viz web deployment, as
        `linkerd viz dashboard` does.
        """
        from meshctl.cli import _common
        from meshctl.dashboard import launch
        from meshctl_proxy.config import parse_duration

        try:
            wait_s = parse_duration(wait)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--wait") from None
        for flag, url in (("--prometheus-url", prometheus_url), ("--grafana-url", grafana_url)):
            if url is not None and not url.startswith(("http://", "https://")):
                raise typer.BadParameter(f"expected an http:// or https:// URL, got {url!r}", param_hint=flag)
        if enforced_host is not None:
            import re

            try:
                re.compile(enforced_host)
            except re.error as exc:
                raise typer.BadParameter(f"not a regular expression: {exc}", param_hint="--enforced-host") from None

        options = launch.Options(address=address, port=port, show=show.value, wait_s=wait_s,
                                 prometheus_url=prometheus_url, grafana_url=grafana_url, demo_dir=demo_dir,
                                 enforced_host=enforced_host)
        # One rule for every command that may read a cluster or the local mesh (meshctl viz stat's).
        from meshctl.cli.viz import reads_cluster

        opts = _common.global_options(ctx)
        launch.main(options, opts, cluster_configured=reads_cluster(opts, demo_dir), out=typer.echo,
                    report=_common.report)
