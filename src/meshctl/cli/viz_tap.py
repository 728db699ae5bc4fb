"""``meshctl viz tap``, ``viz top`` and ``viz profile --tap``: live requests from the proxies' tap.

Thin: flags into a ``TapQuery``, resources resolved to proxies, the
``meshctl.viz.tap`` core streams events, this module prints them.  These
commands live on the ``meshctl viz`` sub-app (``meshctl.cli.viz`` calls
:func:`register_viz`); :func:`register`, which the root calls for every
command module, adds nothing.
"""

from __future__ import annotations

import enum
import sys
from typing import Optional

import typer

from meshctl.cli import _common

DEMO_DIR_HELP = "State directory of the local mesh (meshctl demo up --dir); default $MESHCTL_DEMO_DIR, else ~/.local/state/meshctl/demo."


# The filters `viz tap` and `viz top` share (linkerd's flags), declared once.
ResourceArg = typer.Argument(..., metavar="RESOURCE", help="deploy/NAME, pod/NAME, ns/NAME or a type (deploy).")
NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Namespace of RESOURCE (default: the kubeconfig's, or the local mesh's).")
ToOpt = typer.Option(None, "--to", metavar="RESOURCE", help="Only requests to this resource.")
ToNamespaceOpt = typer.Option(None, "--to-namespace", help="Namespace of --to (default: --namespace).")
MethodOpt = typer.Option(None, "--method", help="Only requests with this HTTP method.")
AuthorityOpt = typer.Option(None, "--authority", help="Only requests with this :authority.")
PathOpt = typer.Option(None, "--path", help="Only requests whose path starts with this prefix.")
MaxRpsOpt = typer.Option(100.0, "--max-rps", help="Requests tapped per second per proxy, at most.")


class TapOutput(str, enum.Enum):
    line = "line"
    wide = "wide"
    json = "json"


def register(app: typer.Typer) -> None:
    """Nothing on the root: these are ``meshctl viz`` commands (see :func:`register_viz`)."""


def _duration(raw: str | None, flag: str) -> float | None:
    from meshctl.errors import UsageError
    from meshctl_proxy.config import parse_duration

    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _max_rps(value: float) -> float:
    from meshctl.errors import UsageError

    if not 0 < value <= 100_000:
        raise UsageError(f"--max-rps: expected a number in (0, 100000], got {value:g}")
    return value


def _setup(ctx: typer.Context, resource: str, namespace: Optional[str], demo_dir: Optional[str], *,
           to: Optional[str] = None, to_namespace: Optional[str] = None):
    """Usage errors first; then where the proxies are: in a cluster (viz.reads_cluster, the rule of
    viz stat), through the tap server; else the local mesh, subscribed to directly."""
    from meshctl.viz import tap

    res = tap.parse_resource(resource)
    to_res = tap.parse_resource(to, flag="--to") if to else None
    from meshctl.cli.viz import reads_cluster

    opts = _common.global_options(ctx)
    if reads_cluster(opts, demo_dir):
        from meshctl import k8s

        cluster = k8s.Cluster.from_options(opts)
        ns = namespace or k8s.kubeconfig_namespace(opts) or "default"
        return tap, tap.ClusterSource(cluster, res, ns, to=to_res, to_namespace=to_namespace)
    from meshctl.errors import MeshctlError

    try:
        resolver = tap.LocalResolver.load(demo_dir)
    except MeshctlError as exc:
        raise MeshctlError(f"{exc}; to tap a cluster give a kubeconfig (--kubeconfig, ~/.kube/config)") from None
    targets = resolver.targets(res, namespace)
    dst = tuple(resolver.destination_addrs(to_res, to_namespace or namespace)) if to_res else ()
    return tap, tap.LocalSource(resolver, targets, dst)


def _run(coro_factory) -> None:
    """Run the streaming coroutine with SIGINT/SIGTERM stopping it cleanly (no traceback, exit 0)."""
    import asyncio
    import signal

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await coro_factory(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())


def register_viz(viz: typer.Typer) -> None:
    @viz.command("tap")
    def tap_command(
        ctx: typer.Context,
        resource: str = ResourceArg,
        namespace: Optional[str] = NamespaceOpt,
        to: Optional[str] = ToOpt,
        to_namespace: Optional[str] = ToNamespaceOpt,
        method: Optional[str] = MethodOpt,
        authority: Optional[str] = AuthorityOpt,
        path: Optional[str] = PathOpt,
        max_rps: float = MaxRpsOpt,
        output: TapOutput = typer.Option(TapOutput.line, "--output", "-o", help="line (default), wide or json."),
        duration: Optional[str] = typer.Option(None, "--duration", help="Stop after this long (e.g. 30s); default: until Ctrl-C."),
        demo_dir: Optional[str] = typer.Option(None, "--demo-dir", help=DEMO_DIR_HELP),
    ) -> None:
        """Watch requests live: a req, rsp and end line per request, as linkerd viz tap.

        Examples:

          meshctl viz tap deploy/product-gateway-api

          meshctl viz tap deploy/product-gateway-api --to deploy/product-api --path /api/products -o wide

          meshctl viz tap ns/shop -o json
        """
        import json

        if path is not None and not path.startswith("/"):
            from meshctl.errors import UsageError

            raise UsageError(f"--path: a path prefix starts with '/', got {path!r}")
        seconds = _duration(duration, "--duration")
        tap, source = _setup(ctx, resource, namespace, demo_dir, to=to, to_namespace=to_namespace)
        query = tap.TapQuery(method=method.upper() if method else None, authority=authority, path=path,
                             max_rps=_max_rps(max_rps), header_names=output is TapOutput.json)
        formatter = tap.EventFormatter(resolver=source.resolver, wide=output is TapOutput.wide)
        out = sys.stdout

        async def stream(stop):
            import asyncio

            def on_event(target, event):
                if output is TapOutput.json:
                    text = json.dumps(formatter.json_doc(target, event))
                else:
                    text = formatter.format(target, event)
                if text is None:
                    return
                try:
                    out.write(text + "\n")
                    out.flush()
                except BrokenPipeError:  # `| head`: the reader is gone, stop quietly
                    stop.set()

            if seconds:
                asyncio.get_running_loop().call_later(seconds, stop.set)
            await source.run(query, on_event=on_event, notice=_common.report, stop=stop)

        _run(stream)

    @viz.command("tap-server", hidden=True)
    def tap_server_command(
        ctx: typer.Context,
        tls_cert_file: str = typer.Option(..., "--tls-cert-file", help="PEM serving certificate (the APIService's caBundle vouches for it)."),
        tls_key_file: str = typer.Option(..., "--tls-key-file", help="PEM key of the serving certificate."),
        listen: str = typer.Option(f"0.0.0.0:8089", "--listen", help="HOST:PORT to serve on."),
        namespace: str = typer.Option("meshctl-viz", "--namespace", "-n", help="The viz namespace (the tap ServiceAccount's)."),
        service_account: str = typer.Option("tap", "--service-account", help="The ServiceAccount whose identity taps."),
        identity_addr: Optional[str] = typer.Option(None, "--identity-addr", help="The identity service (default: the mesh's Service)."),
        identity_name: Optional[str] = typer.Option(None, "--identity-name", help="The identity service's own identity."),
        identity_token_file: Optional[str] = typer.Option(None, "--identity-token-file", help="ServiceAccount token projected for identity.meshctl.io."),
        identity_dir: str = typer.Option("/var/run/meshctl/identity/end-entity", "--identity-dir", help="Writable in-memory directory for the key."),
        cluster_domain: str = typer.Option("cluster.local", "--cluster-domain", help="The cluster's DNS domain."),
    ) -> None:
        """Run the tap server (Linkerd's tap APIService): relayed by the API server, it subscribes to the
        proxies' tap as the tap identity and streams their events back (docs/viz.md)."""
        import asyncio
        import logging
        import signal

        from meshctl import k8s
        from meshctl.errors import UsageError
        from meshctl.viz import tapserver
        from meshctl_proxy.config import IDENTITY_TOKEN_FILE, parse_addr

        def addr(raw, flag):
            try:
                return parse_addr(raw)
            except ValueError as exc:
                raise UsageError(f"{flag}: {exc}") from None

        serve_opts = tapserver.ServeOptions(
            listen=addr(listen, "--listen"), cert_file=tls_cert_file, key_file=tls_key_file, namespace=namespace,
            service_account=service_account, identity_addr=addr(identity_addr, "--identity-addr") if identity_addr else None,
            identity_name=identity_name, token_file=identity_token_file or IDENTITY_TOKEN_FILE,
            identity_dir=identity_dir, cluster_domain=cluster_domain)
        opts = _common.global_options(ctx)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cluster = k8s.Cluster.from_options(opts)

        async def main():
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
            try:
                await tapserver.serve(cluster, opts.mesh_namespace, serve_opts, announce=_common.report)
            except asyncio.CancelledError:
                pass

        asyncio.run(main())

    @viz.command("top")
    def top_command(
        ctx: typer.Context,
        resource: str = ResourceArg,
        namespace: Optional[str] = NamespaceOpt,
        to: Optional[str] = ToOpt,
        to_namespace: Optional[str] = ToNamespaceOpt,
        method: Optional[str] = MethodOpt,
        authority: Optional[str] = AuthorityOpt,
        path: Optional[str] = PathOpt,
        max_rps: float = MaxRpsOpt,
        refresh: str = typer.Option("1s", "--refresh", help="How often the table is redrawn (printed, when piped)."),
        duration: Optional[str] = typer.Option(None, "--duration", help="Stop after this long; default: until q or Ctrl-C."),
        demo_dir: Optional[str] = typer.Option(None, "--demo-dir", help=DEMO_DIR_HELP),
    ) -> None:
        """A live table of requests by source, destination, method and path, most frequent first (q quits).

        On a terminal the table refreshes in place; piped, a plain snapshot is
        printed every --refresh while something changed, and once at the end.
        """
        every = _duration(refresh, "--refresh")
        if not every or every <= 0:
            from meshctl.errors import UsageError

            raise UsageError("--refresh: must be more than 0s")
        seconds = _duration(duration, "--duration")
        tap, source = _setup(ctx, resource, namespace, demo_dir, to=to, to_namespace=to_namespace)
        query = tap.TapQuery(method=method.upper() if method else None, authority=authority, path=path,
                             max_rps=_max_rps(max_rps))
        from meshctl.cli import _viz_top

        _run(lambda stop: _viz_top.run(tap, source, query, stop=stop, every=every, seconds=seconds,
                                       title=f"meshctl viz top {resource}"))

    @viz.command("profile")
    def profile_command(
        ctx: typer.Context,
        service: str = typer.Argument(..., metavar="SERVICE", help="The Service the profile is for."),
        tap_resource: Optional[str] = typer.Option(None, "--tap", metavar="RESOURCE",
                                                   help="Make routes from the live requests to this resource (deploy/NAME)."),
        tap_duration: str = typer.Option("5s", "--tap-duration", help="How long to watch traffic."),
        tap_route_limit: int = typer.Option(20, "--tap-route-limit", help="At most this many routes, the most requested."),
        namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace of the Service (default: the local mesh's)."),
        output: _common.OutputFormat = typer.Option(_common.OutputFormat.yaml, "--output", "-o", help="yaml or json."),
        demo_dir: Optional[str] = typer.Option(None, "--demo-dir", help=DEMO_DIR_HELP),
    ) -> None:
        """Output a ServiceProfile made from live traffic (linkerd viz profile --tap).

        Requests reaching RESOURCE during --tap-duration become routes named
        like 'GET /api/products/{id}': numeric, UUID and long hex path
        segments become parameters.

        Example:

          meshctl viz profile --tap deploy/product-api --tap-duration 5s product-api-svc -n shop
        """
        from meshctl import profiles
        from meshctl.profiles import text
        from meshctl.errors import UsageError

        if tap_resource is None:
            raise UsageError("viz profile makes profiles from live traffic: give --tap RESOURCE "
                             "(for OpenAPI, protobuf or a template use meshctl profile)")
        if tap_route_limit <= 0:
            raise UsageError(f"--tap-route-limit: expected a positive number, got {tap_route_limit}")
        seconds = _duration(tap_duration, "--tap-duration")
        if not seconds:
            raise UsageError("--tap-duration: must be more than 0s")
        profiles.check_service(service)
        tap, source = _setup(ctx, tap_resource, namespace, demo_dir)
        ns = namespace or source.namespace
        name = profiles.profile_name(service, ns, "cluster.local")
        seen: list[tuple[str, str]] = []

        async def collect(stop):
            import asyncio

            def on_event(target, event):
                if event.get("event") == "req":
                    seen.append((event.get("method") or "GET", event.get("path") or "/"))

            asyncio.get_running_loop().call_later(seconds, stop.set)
            await source.run(tap.TapQuery(direction="inbound", max_rps=1000.0), on_event=on_event,
                             notice=_common.report, stop=stop)

        _run(collect)
        if not seen:
            from meshctl.errors import MeshctlError

            raise MeshctlError(f"no requests reached {tap_resource} in {tap_duration}: no routes to make "
                               "(send traffic, or watch longer with --tap-duration)")
        made = tap.profile_from_requests(seen, name=name, namespace=ns, route_limit=tap_route_limit)
        sys.stdout.write(text.dump(made.to_dict(), output.value))
        sys.stdout.flush()
