"""``meshctl destination serve``: run the destination service on a local registry."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(name="destination", help="The destination service: endpoints and ServiceProfiles for proxies.",
                        no_args_is_help=True)

    @group.command("serve")
    def serve(
        ctx: typer.Context,
        registry: str = typer.Option("", "--registry", help="YAML/JSON file of services, endpoints and profiles (watched)."),
        kubernetes: bool = typer.Option(False, "--kubernetes", help="Watch the Kubernetes API instead of a registry file."),
        addr: str = typer.Option("127.0.0.1:8086", "--addr", help="HOST:PORT to listen on (Linkerd's destination port is 8086)."),
        heartbeat: float = typer.Option(5.0, "--heartbeat", min=0.05, help="Seconds of silence before a heartbeat line."),
    ) -> None:
        """Serve endpoint sets and ServiceProfiles from a local registry file (docs/destination.md)."""
        import asyncio
        import logging

        from meshctl.cli import _common
        from meshctl.destination.registry import LocalRegistry
        from meshctl.destination.server import serve as run_server
        from meshctl.errors import InputError, UsageError
        from meshctl_proxy.config import parse_addr

        try:
            host, port = parse_addr(addr)
        except ValueError as exc:
            raise UsageError(f"--addr: {exc}") from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if kubernetes == bool(registry):
            raise UsageError("give exactly one of --registry FILE and --kubernetes")
        if kubernetes:
            from meshctl import k8s
            from meshctl.k8s.discovery import KubernetesDiscovery, serve as run_synced

            opts = _common.global_options(ctx)
            discovery = KubernetesDiscovery(lambda: k8s.Cluster.from_options(opts), mesh=k8s.read_mesh_config(opts))
            main = run_synced(discovery, host, port, heartbeat=heartbeat)
        else:
            discovery = LocalRegistry(registry, on_error=lambda msg: _common.report(f"Error: {msg}"))
            main = run_server(discovery, host, port, heartbeat=heartbeat)
        try:
            asyncio.run(main)
        except OSError as exc:
            raise InputError(f"--addr {addr}: {exc.strerror or exc}") from None

    app.add_typer(group)
