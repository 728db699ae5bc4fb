"""``meshctl proxy-injector serve``: the admission webhook (run in the control plane)."""

from __future__ import annotations

import typer

from meshctl.cli import _common


def register(app: typer.Typer) -> None:
    group = typer.Typer(name="proxy-injector", help="The proxy-injector admission webhook.", no_args_is_help=True)

    @group.command("serve")
    def serve(
        ctx: typer.Context,
        addr: str = typer.Option("0.0.0.0:8443", "--addr", help="HOST:PORT to serve HTTPS on."),
        tls_dir: str = typer.Option("/var/run/meshctl/tls", "--tls-dir", help="Directory with tls.crt and tls.key."),
    ) -> None:
        """Serve AdmissionReviews: mesh pods annotated meshctl.io/inject: enabled (or in such a namespace)."""
        import logging
        import os
        import signal
        import threading

        from meshctl import k8s
        from meshctl.errors import InputError, UsageError
        from meshctl.injector.server import InjectorServer
        from meshctl_proxy.config import parse_addr

        opts = _common.global_options(ctx)
        try:
            host, port = parse_addr(addr)
        except ValueError as exc:
            raise UsageError(f"--addr: {exc}") from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cluster = k8s.Cluster.from_options(opts, timeout=2.0)
        mesh = k8s.read_mesh_config(opts)
        try:
            server = InjectorServer(host=host, port=port, cert_file=os.path.join(tls_dir, "tls.crt"),
                                    key_file=os.path.join(tls_dir, "tls.key"),
                                    namespace_getter=lambda name: cluster.get("v1", "namespaces", name),
                                    mesh=lambda: mesh)
        except OSError as exc:
            raise InputError(f"proxy-injector: {exc.strerror or exc}") from None
        _common.report(f"proxy-injector listening on {host}:{server.address[1]}")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        server.start()
        stop.wait()
        server.stop()

    app.add_typer(group)
