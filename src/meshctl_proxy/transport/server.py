"""The proxy process: listeners, per-connection protocol detection, shutdown.

This is the one layer that owns sockets for accepting.  A connection is
accepted by :class:`DetectProtocol`, which learns its original destination
(SO_ORIGINAL_DST), waits for the first bytes (at most the detection
timeout) and hands the transport to the HTTP/1, HTTP/2 or TCP handler.  A TLS
ClientHello goes to the TLS seam (``Proxy.tls_acceptor``) when one is
installed, else through as opaque TCP.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from meshctl_proxy.wire import detect as detection
from meshctl_proxy.transport.h1_client import H1Pool
from meshctl_proxy.transport.h1_server import H1ServerConnection
from meshctl_proxy.hooks import RequestHooks
from meshctl_proxy.telemetry.metrics import Metrics
from meshctl_proxy.model import INBOUND, OUTBOUND, ConnectionContext, Endpoint, ProxyError, Request, Response, Target
from meshctl_proxy.wire.loop_marker import LoopMarker
from meshctl_proxy.policy.router import IDLE_TIMEOUT, MAX_IDLE, TcpConnector, default_router, mesh_identity, open_connection
from meshctl_proxy.transport.exchange import replayable
from meshctl_proxy.transport.tcp import PipeEnd, splice
from meshctl_proxy.transport.original_dst import original_dst

if TYPE_CHECKING:  # HTTP/2 is imported when a connection first speaks it (start-up time, idle memory)
    from meshctl_proxy.transport.h2_client import H2Pool
    from meshctl_proxy.transport.h2_server import H2ServerConnection

log = logging.getLogger("meshctl_proxy")

# Young-generation collections every this many net container allocations (CPython: 700);
# see settle_heap().
GC_YOUNG_THRESHOLD = 20_000

# Bytes we are willing to hold while deciding what protocol a connection speaks.
MAX_DETECT_BYTES = 64 * 1024


class HttpUpstream:
    """``send(request, endpoint)``: the upstream exchange routers call (HTTP/1 pool or HTTP/2 pool)."""

    def __init__(self, direction: str, connector, metrics: Metrics, *, connect_timeout: float,
                 h2_settings: dict | None = None, idle_timeout: float = IDLE_TIMEOUT, max_idle: int = MAX_IDLE) -> None:
        self.direction = direction
        self.connector = connector
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.idle: dict[str, Any] = {"idle_timeout": idle_timeout, "max_idle": max_idle}  # each pool's bounds (EndpointPool)
        self.h1 = H1Pool(connector, metrics, direction, connect_timeout=connect_timeout, **self.idle)
        self.h2: H2Pool | None = None  # made when a request first speaks HTTP/2
        self.h2_settings = h2_settings or {}

    def pool(self, request: Request):
        if request.protocol != "h2":
            return self.h1
        if self.h2 is None:
            from meshctl_proxy.transport.h2_client import H2Pool

            self.h2 = H2Pool(self.connector, self.metrics, self.direction, connect_timeout=self.connect_timeout,
                             **self.idle)
        return self.h2

    async def send(self, request: Request, endpoint: Endpoint) -> Response:
        """One attempt on a pooled connection, and the stale-connection retry (exchange.replayable) once."""
        pool = self.pool(request)
        try:
            return await pool.send(request, endpoint)
        except ProxyError as exc:
            if not replayable(request, exc):
                raise
        return await pool.send(request, endpoint, fresh=True)

    async def resend(self, request: Request, endpoint: Endpoint) -> Response:
        """The retry of an attempt that failed replayable (made by a fast path): a fresh connection, once."""
        return await self.pool(request).send(request, endpoint, fresh=True)

    def close(self) -> None:
        self.h1.close()
        if self.h2 is not None:
            self.h2.close()


class Proxy:
    """One proxy: the three listeners and everything they share.

    *outbound_router*, *inbound_router*, *connector* and *tls_acceptor* are the
    seams (docs/proxy.md, "Seams"); ``None`` means the defaults.
    """

    def __init__(self, config, *, outbound_router=None, inbound_router=None, connector=None,
                 tls_acceptor=None) -> None:
        self.config = config
        pod = {"namespace": config.pod_namespace, "pod": config.pod_name}
        if config.workload_kind and config.workload_name:
            # Linkerd's scrape config adds the owner as e.g. deployment="web".
            pod[config.workload_kind.lower()] = config.workload_name
        self.metrics = Metrics(pod_labels=pod, max_authorities=config.max_authority_labels,
                               max_series=config.max_metric_series)
        from meshctl_proxy.telemetry.route_metrics import RouteMetrics

        self.route_metrics = RouteMetrics(pod_labels=self.metrics.pod_labels, max_dst=config.max_authority_labels,
                                          series=self.metrics.series)
        self.metrics.extra_renderers.append(self.route_metrics.render)
        self.connector = connector or TcpConnector()
        self.tls_acceptor = tls_acceptor
        # The per-request hook (meshctl_proxy.hooks): observers (tap, later policy) are called once per
        # request while the list is non-empty.
        self.hooks = RequestHooks()
        self.observers = self.hooks.observers
        self._routers = {OUTBOUND: outbound_router, INBOUND: inbound_router}
        # Each side marks what it forwards (Via) and refuses its own mark: a forwarding loop (wire.loop_marker).
        self.loop_markers = {OUTBOUND: LoopMarker.new(OUTBOUND), INBOUND: LoopMarker.new(INBOUND)}
        self.routers: dict = {}
        self.upstreams = {
            OUTBOUND: HttpUpstream(OUTBOUND, self.connector, self.metrics,
                                   connect_timeout=config.outbound_connect_timeout,
                                   idle_timeout=config.upstream_idle_timeout, max_idle=config.upstream_max_idle),
            INBOUND: HttpUpstream(INBOUND, self.connector, self.metrics,
                                  connect_timeout=config.inbound_connect_timeout,
                                  idle_timeout=config.upstream_idle_timeout, max_idle=config.upstream_max_idle),
        }
        self.opaque_ports = {OUTBOUND: config.outbound_ports_disable_protocol_detection,
                             INBOUND: config.inbound_ports_disable_protocol_detection}
        self.connections: set = set()  # live handlers; each has drain()
        self.tasks: set[asyncio.Task] = set()
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.ready = False
        # More conditions for /ready (e.g. holding an mTLS certificate), and extra admin paths.
        self.readiness: list = []
        self.admin_routes: dict = {}
        self.draining = False
        self.stopped: asyncio.Event | None = None
        # The tap hub is in self.observers (the hook's list, above) only while someone subscribes
        # (meshctl_proxy.telemetry.tap).
        from meshctl_proxy.identity.mesh import identity_enabled
        from meshctl_proxy.telemetry.tap import TapAccess, TapHub, TapServer

        info = {"namespace": config.pod_namespace, "pod": config.pod_name}
        if config.workload_kind and config.workload_name:
            info["workload"] = f"{config.workload_kind.lower()}/{config.workload_name}"
        self.tap = TapServer(TapHub(self.observers, proxy_info=info),
                             TapAccess(identity_enabled(config), config.tap_svc_name), spawn=self.spawn)
        self.metrics.extra_renderers.append(self.tap.hub.render_metrics)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def start(self) -> None:
        from meshctl_proxy.telemetry.admin import AdminProtocol

        self.stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        cfg = self.config
        for name, addr, factory in (
            (OUTBOUND, cfg.outbound_listen_addr, lambda: DetectProtocol(self, OUTBOUND)),
            (INBOUND, cfg.inbound_listen_addr, lambda: DetectProtocol(self, INBOUND)),
            ("admin", cfg.admin_listen_addr, lambda: AdminProtocol(self)),
            ("control", cfg.control_listen_addr, self.tap.protocol),
        ):
            server = await loop.create_server(factory, addr[0], addr[1], reuse_address=True, backlog=1024)
            self.servers[name] = server
            self.addresses[name] = server.sockets[0].getsockname()[:2]
        own = frozenset(self.addresses.values())
        for direction in (OUTBOUND, INBOUND):
            self.routers[direction] = self._routers[direction] or default_router(direction, cfg.inbound_forward_host,
                                                                                 own)
        if self._routers[OUTBOUND] is None or self._routers[INBOUND] is None:
            # One destination client (its watches) for both sides, as Linkerd's control-plane client.
            from meshctl_proxy.discovery.client import DestinationClient

            client = DestinationClient.from_config(cfg)
        if self._routers[OUTBOUND] is None:
            # Outbound traffic goes through discovery, balancing and route policy
            # (meshctl_proxy.policy.traffic_router); names the mesh does not know go direct.
            from meshctl_proxy.policy.traffic_router import TrafficRouter

            self.routers[OUTBOUND] = TrafficRouter.from_config(cfg, metrics=self.route_metrics, own_addrs=own,
                                                               client=client)
        if self._routers[INBOUND] is None:
            # Inbound requests are counted by the route of their authority's ServiceProfile, as Linkerd's
            # inbound proxy counts them (meshctl_proxy.policy.inbound_routes).
            from meshctl_proxy.policy.inbound_routes import ProfiledInboundRouter

            self.routers[INBOUND] = ProfiledInboundRouter(cfg.inbound_forward_host, client, self.route_metrics,
                                                          own_addrs=own)
        self.ready = True

    def is_ready(self) -> bool:
        return self.ready and all(check() for check in self.readiness)

    def begin_shutdown(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.ready = False
        self.spawn(self._shutdown())

    async def _shutdown(self) -> None:
        """Stop accepting, drain in-flight work within the grace period, then stop."""
        for name in (OUTBOUND, INBOUND, "control"):
            self.servers[name].close()
        self.tap.shutdown()  # subscribers see their stream end, not a reset
        for conn in list(self.connections):
            conn.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_grace_period
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for upstream in self.upstreams.values():
            upstream.close()
        for router in self.routers.values():
            if hasattr(router, "aclose"):
                await router.aclose()
        self.servers["admin"].close()
        self.stopped.set()

    async def terminate_tls(self, transport, ctx: ConnectionContext, initial: bytes, stats) -> None:
        """Mesh TLS: terminate through the TLS seam, then detect again on the plaintext."""
        # Resumed here, in the same step that calls terminate(): the TLS transport takes
        # over the raw protocol before the loop can deliver another byte.
        transport.resume_reading()
        try:
            terminated = await self.tls_acceptor.terminate(transport, initial)
        except Exception as exc:  # handshake refused, timed out, or no certificate yet
            log.info("%s TLS from %s refused: %s", ctx.direction, ctx.client_addr, exc)
            stats.closed += 1
            transport.abort()
            return
        ctx.tls = "true"
        ctx.peer_identity = terminated.client_identity
        # Count the connection under tls="true" and the client's identity from now on (Linkerd
        # labels transport metrics with the verified peer), not under the plaintext label.
        stats.opened -= 1
        terminated.transport.start(DetectProtocol(self, ctx.direction, ctx=ctx))

    # -- opaque TCP ---------------------------------------------------------------
    async def forward_tcp(self, down: PipeEnd, ctx: ConnectionContext, initial: bytes) -> None:
        router = self.routers[ctx.direction]
        try:
            endpoint = router.select(Target(ctx.direction, None, ctx.orig_dst, detection.TCP))
        except ProxyError as exc:
            log.info("tcp %s from %s: %s", ctx.direction, ctx.client_addr, exc.reason)
            down.transport.close()
            return
        authorize = getattr(router, "authorize_tcp", None)
        if authorize is not None and not authorize(ctx):
            # The inbound policy denies this client: a TCP connection can only be closed.
            down.transport.close()
            return
        server_id = mesh_identity(self.connector, endpoint)
        stats = self.metrics.tcp(ctx.direction, "dst", None, endpoint.addr, "true" if server_id else "no_identity",
                                 server_id, endpoint.labels if ctx.direction == OUTBOUND else ())
        timeout = (self.config.inbound_connect_timeout if ctx.direction == INBOUND
                   else self.config.outbound_connect_timeout)
        try:
            _t, up = await open_connection(self.connector, endpoint, lambda: PipeEnd(stats), timeout=timeout)
        except ProxyError as exc:
            log.info("tcp %s: %s", ctx.direction, exc.reason)
            down.transport.close()
            return
        assert isinstance(up, PipeEnd)
        stats.opened += 1
        if down.closed:
            up.transport.close()
            return
        splice(down, up, to_up=initial)
        down.transport.resume_reading()


class DetectProtocol(asyncio.Protocol):
    """The first protocol of every accepted connection: learn where it goes and what it speaks."""

    def __init__(self, proxy: Proxy, direction: str, *, ctx: ConnectionContext | None = None, stats=None) -> None:
        self.proxy = proxy
        self.direction = direction
        self.transport: asyncio.Transport | None = None  # set by connection_made
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.ctx = ctx  # preset when detecting again on a TLS-terminated transport
        self.stats = stats
        self.decided = False

    def connection_made(self, transport) -> None:
        if self.ctx is not None:
            self.begin(transport, self.ctx)
            return
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        orig = original_dst(sock) if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None
        ctx = ConnectionContext(self.direction, tuple(peer[:2]), tuple(local[:2]), orig)
        self.begin(transport, ctx)

    def begin(self, transport, ctx: ConnectionContext) -> None:
        """Start detection on *transport* (also the re-entry point after TLS termination)."""
        self.transport = transport
        self.ctx = ctx
        proxy = self.proxy
        if self.stats is None:
            self.stats = proxy.metrics.tcp(ctx.direction, "src", None, ctx.target_addr, ctx.tls, ctx.peer_identity)
            self.stats.opened += 1
        proxy.connections.add(self)
        if proxy.draining:
            transport.close()
            return
        if ctx.orig_dst is not None and ctx.orig_dst[1] in proxy.opaque_ports[ctx.direction]:
            self._decide(detection.TCP)
            return
        self.timer = asyncio.get_running_loop().call_later(proxy.config.detect_timeout, self._timeout)

    def data_received(self, data: bytes) -> None:
        self.stats.read_bytes += len(data)
        self.buf += data
        kind = detection.detect(self.buf)
        if kind is None and len(self.buf) > MAX_DETECT_BYTES:
            kind = detection.TCP
        if kind == detection.TLS:
            kind = self._classify_tls()
        if kind is not None:
            self._decide(kind)

    def _classify_tls(self) -> str | None:
        """Mesh TLS for us goes to the TLS seam; any other TLS (the app's own) is opaque."""
        acceptor = self.proxy.tls_acceptor
        if acceptor is None or self.ctx.tls == "true":
            return detection.TCP
        hello = acceptor.classify(self.buf)
        kind = type(hello).__name__
        if kind == "NeedMore":
            return None if len(self.buf) <= MAX_DETECT_BYTES else detection.TCP
        if kind == "ClientHello" and acceptor.is_mesh(hello):
            return detection.TLS
        return detection.TCP

    def eof_received(self) -> bool:
        kind = detection.detect(self.buf) if self.buf else None
        self._decide(kind or detection.TCP, eof=True)
        return True

    def _timeout(self) -> None:
        self.timer = None
        if not self.decided:
            self._decide(detection.TCP)

    def drain(self) -> None:
        if not self.decided and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.decided:
            self.decided = True
            self.stats.closed += 1
            self.proxy.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def _decide(self, kind: str, *, eof: bool = False) -> None:
        if self.decided:
            return
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        proxy, ctx, transport = self.proxy, self.ctx, self.transport
        proxy.connections.discard(self)
        initial, self.buf = self.buf, b""
        if kind == detection.TLS:
            ctx.protocol = detection.TLS
            transport.pause_reading()
            proxy.spawn(proxy.terminate_tls(transport, ctx, initial, self.stats))
            return
        if kind in (detection.H1, detection.H2):
            handler: H1ServerConnection | H2ServerConnection
            if kind == detection.H1:
                handler = H1ServerConnection(proxy, ctx, self.stats)
            else:  # h2 is imported only when a connection speaks it (start-up, idle memory)
                from meshctl_proxy.transport.h2_server import H2ServerConnection

                handler = H2ServerConnection(proxy, ctx, self.stats)
            ctx.protocol = kind
            transport.set_protocol(handler)
            handler.connection_made(transport)
            handler.feed_initial(initial)
            if eof:
                handler.eof_received()
            return
        ctx.protocol = detection.TCP
        down = PipeEnd(self.stats)
        transport.set_protocol(down)
        down.connection_made(transport)
        if eof:
            down.eof = True
        transport.pause_reading()
        proxy.spawn(proxy.forward_tcp(down, ctx, initial))


def configure_logging(config) -> None:
    level = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
             "error": logging.ERROR}[config.log_level]
    if config.log_format == "json":
        fmt = '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def settle_heap() -> None:
    """Move everything built at start-up out of the collector's sight, and collect young objects less often.

    The proxy allocates a few container objects per request, almost all freed
    by reference counting.  With CPython's defaults a young-generation pass ran
    every ~25 requests and the occasional full pass walked every module and
    config object loaded at start (profiled: ~5% of the proxy's CPU under load,
    and millisecond pauses in the latency tail).  ``gc.freeze()`` makes the
    start-up heap permanent; cycles made while serving are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


async def serve(config, **seams) -> int:
    """Run a proxy until SIGTERM/SIGINT (or POST /shutdown) and its drain complete."""
    from meshctl_proxy.identity.mesh import Mesh

    mesh = Mesh.from_config(config)  # identity, mTLS and the inbound policy
    proxy = Proxy(config, **{**mesh.seams(), **seams})
    await proxy.start()
    mesh.attach(proxy)
    settle_heap()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proxy.begin_shutdown)
    addrs = " ".join(f"{name}={host}:{port}" for name, (host, port) in proxy.addresses.items())
    print(f"meshctl-proxy listening {addrs}", file=sys.stderr, flush=True)
    await proxy.stopped.wait()
    print("meshctl-proxy stopped", file=sys.stderr, flush=True)
    return 0


def run(config, **seams) -> int:
    configure_logging(config)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(serve(config, **seams))
    return uvloop.run(serve(config, **seams))
