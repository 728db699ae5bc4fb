"""HTTP/1.x from clients: the accepted connection, its phase, and the general path.

:class:`H1ServerConnection` parses what the client sends (the framing rules
live in :mod:`meshctl_proxy.wire.http1`, sans-IO), keeps the connection's
state in one :class:`Phase`, and runs each request through the exchange
(:mod:`meshctl_proxy.transport.exchange`).  What it delegates, each in its
own module: the request as forwarded (``h1_request``), writing the response
(``h1_response``), the fast path (``h1_fast``), the 101 tunnel
(``h1_tunnel``); the upstream side is ``h1_client``.  asyncio Protocols
rather than streams: the per-request path is a parser callback, a dict lookup
and a write, with one coroutine per connection (profiling showed
StreamReader/StreamWriter costing about a third of the request time).
"""

from __future__ import annotations

import asyncio
import enum

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.hooks import Watched
from meshctl_proxy.model import ConnectionContext, ProxyError, Request, Response
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.exchange import Exchange, RequestPath, end_watch
from meshctl_proxy.transport.h1_connection import HeldWrites
from meshctl_proxy.transport.h1_fast import FastPath
from meshctl_proxy.transport.connection import FlowControl
from meshctl_proxy.transport.h1_request import RequestMaker
from meshctl_proxy.transport.h1_response import close_lingering, stream_response, whole_response
from meshctl_proxy.transport.h1_tunnel import Upgraded, start_tunnel
from meshctl_proxy.transport.outbox import outbox
from meshctl_proxy.wire import http1
from meshctl_proxy.wire.http1 import End, H1Error, RequestHead, Upgrade

# Pipelined requests waiting behind the one in flight before we stop reading.
MAX_PIPELINED = 16


class Phase(enum.Enum):
    """Where a client connection is in its request cycle (h11 keeps the same in its connection states)."""

    IDLE = "idle"              # between exchanges: the next request may start
    EXCHANGING = "exchanging"  # a request is with the router and the upstream; nothing written back yet
    RESPONDING = "responding"  # its response is being written
    TUNNELLED = "tunnelled"    # after a 101: an opaque pipe (transport.tcp.splice), HTTP is over
    DRAINING = "draining"      # no request will start again: the connection is closing (or lingering)
    CLOSED = "closed"          # the transport is gone


# Module globals: compared by identity on every request, without an attribute lookup on Phase.
IDLE, EXCHANGING, RESPONDING = Phase.IDLE, Phase.EXCHANGING, Phase.RESPONDING
TUNNELLED, DRAINING, CLOSED = Phase.TUNNELLED, Phase.DRAINING, Phase.CLOSED


class H1ServerConnection(HeldWrites):
    """A client's HTTP/1.x connection to the proxy.

    ``phase`` is where it is in the request cycle (:class:`Phase`);
    ``keep_alive`` turns False once no further request may start (a drain, the
    client's EOF, a refused request), and the connection closes when the
    exchange in flight, if any, is over; ``refusal`` is the error a refused request is answered with.
    """

    def __init__(self, runtime, ctx: ConnectionContext, stats: TcpStats) -> None:
        self.rt = runtime
        self.ctx = ctx
        self.stats = stats
        self.path = path = RequestPath(runtime, ctx)
        self.watched: Watched | None = None  # the hook's watches of the request in flight (meshctl_proxy.hooks)
        self.fast = FastPath(self)  # the fast path's exchange in flight (h1_fast)
        marker = runtime.loop_markers[ctx.direction]
        self.reader = http1.RequestReader((marker,))
        self.requests = RequestMaker(ctx, (b"via", marker.entry("http/1")))  # the requests as forwarded
        self._head_timer: asyncio.TimerHandle | None = None  # runs while a request head is incomplete
        self.transport = None
        self.queue: list[tuple[Request, RequestHead]] = []
        self.current_body: Body | None = None
        self.tunnel_buf: list[bytes] | None = None  # client bytes after an Upgrade head, held until 101
        self.refusal: H1Error | None = None
        self.phase = IDLE
        self.keep_alive = True
        FlowControl.__init__(self)
        self._wakeup: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.stream_task: asyncio.Task | None = None

    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    # -- transport callbacks ---------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.rt.connections.add(self)
        # One lookup per connection: on Python 3.11 get_running_loop() is a getpid() syscall.
        self.loop = loop = asyncio.get_running_loop()
        self._outbox = outbox(loop)
        self.task = loop.create_task(self._serve())

    def feed_initial(self, data: bytes) -> None:
        """The bytes protocol detection read (and counted) before handing over."""
        if data:
            self.stats.read_bytes -= len(data)
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.stats.read_bytes += len(data)
        if self.tunnel_buf is not None:
            self.tunnel_buf.append(data)
            return
        if self.refusal is not None:
            return
        try:
            events = self.reader.feed(data)
        except H1Error as exc:
            self._refuse(exc)
            return
        self._on_events(events)
        if self._head_timer is None and self.reader.head_incomplete() and self.phase is not CLOSED:
            self._head_timer = self.loop.call_later(self.rt.config.header_read_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        """A request head begun and not finished in time: 408 (nginx's client_header_timeout, Node's
        headersTimeout), then close.  A client sending its head a byte at a time holds a connection
        and its buffers for as long as it likes otherwise."""
        self._head_timer = None
        if self.phase is not CLOSED and self.refusal is None and self.reader.head_incomplete():
            self._refuse(H1Error(408, "request head not received in time"))

    def _on_events(self, events: list) -> None:
        for ev in events:
            t = type(ev)
            if t is bytes:
                self.current_body.feed(ev)
            elif t is End:
                if self.current_body is not None:
                    self.current_body.finish(ev.trailers)
                    self.current_body = None
            elif t is RequestHead:
                self._on_head(ev)
            elif t is Upgrade:
                self.tunnel_buf = [ev.tail] if ev.tail else []
                return

    def _on_head(self, head: RequestHead) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if head.chunked or head.content_length:
            t = self.transport
            body = Body(head.content_length, pause=t.pause_reading, resume=t.resume_reading)
            self.current_body = body
        else:
            body = EMPTY
            self.current_body = None
        request = self.requests.request(head, body)
        if head.expect_continue:
            request.interim = self._interim
        if (body is EMPTY and head.upgrade is None and self.phase is IDLE and not self.queue
                and not head.expect_continue and self.keep_alive):
            # The fast path (h1_fast) when the router's shortcut names the endpoint: sent from here.
            endpoint = self.path.take_shortcut(request)
            if endpoint is not None:
                self.phase = EXCHANGING
                self.fast.send(request, head, endpoint)
                return
        self.queue.append((request, head))
        if len(self.queue) > MAX_PIPELINED:
            self.transport.pause_reading()
        if self.phase is IDLE:
            self._wake()

    def _refuse(self, exc: H1Error) -> None:
        """A request we will not forward: 400/431/501/505, then close (RFC 9112 section 9.6)."""
        self.refusal = exc
        self.keep_alive = False
        if self.current_body is not None:
            self.current_body.abort(BodyError(exc.reason))
            self.current_body = None
        if self.phase is IDLE and not self.queue:
            # Nothing in flight: the refusal is this connection's last word.  Otherwise the exchange in
            # flight ends it (its response says close, or its failed body gets the refusal).
            self._write(http1.error_response(exc.status, exc.reason))
            self.phase = DRAINING
            self._close_lingering()
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close_lingering(self) -> None:
        """Close after a refusal, lingering (h1_response.close_lingering): what still comes is dropped."""
        self._outbox.flush()
        close_lingering(self.transport, self.loop)

    def eof_received(self) -> bool:
        if self.tunnel_buf is not None:
            return True
        if self.refusal is not None:  # lingering after a refusal: the client is done too
            self.transport.close()
            return True
        if self.current_body is not None:
            self.current_body.abort(BodyError("client closed mid-body"))
        # Let the in-flight response finish (the client may have half-closed), then close.
        self.keep_alive = False
        if self.phase is IDLE and not self.queue:
            self.phase = DRAINING
            self._close()
        return True

    def connection_lost(self, exc) -> None:
        self.phase = CLOSED
        self.stats.closed += 1
        self.rt.connections.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
        if self.current_body is not None:
            self.current_body.abort(BodyError("client disconnected"))
        for request, _head in self.queue:
            request.body.abort(BodyError("client disconnected"))
        for task in (self.task, self.stream_task):
            if task is not None and not task.done():
                task.cancel()
        self.fail_drain_waiters(ConnectionResetError("client disconnected"))
        self._watch_end(None, error="client disconnected")

    def _interim(self, status: int, headers) -> None:
        """Relay 100 Continue (RFC 9110 section 15.2) while the final response is pending."""
        if self.phase is EXCHANGING:
            self._write(http1.response_head(status, b"", headers))

    def drain(self) -> None:
        """Graceful shutdown: finish the response in flight, then close."""
        self.keep_alive = False
        if self.phase is IDLE and not self.queue and self.transport is not None:
            self.phase = DRAINING
            self._close()

    # -- the request loop -----------------------------------------------------------
    async def _serve(self) -> None:
        """The general path, a task for the connection's life: the queued requests, one at a time."""
        try:
            while True:
                phase = self.phase
                if phase is IDLE and self.queue:
                    request, head = self.queue.pop(0)
                    if len(self.queue) == MAX_PIPELINED:
                        self.transport.resume_reading()
                    self.phase = EXCHANGING
                    if not self._exchange_over(await self._exchange(request, head)):
                        return
                elif phase is EXCHANGING or phase is RESPONDING or (phase is IDLE and self.keep_alive):
                    self._wakeup = self.loop.create_future()  # a request, or the fast exchange in flight, to finish
                    await self._wakeup
                    self._wakeup = None
                else:
                    return  # closing, closed or tunnelled: nothing more to serve here
        except asyncio.CancelledError:
            pass
        except ConnectionError:
            if self.transport is not None:
                self._abort()

    def _exchange_over(self, keep: bool) -> bool:
        """The exchange in flight is over, its response written: IDLE again (True), else close (False).

        Both paths end here.  *keep*: the response allows another request; a
        drain, the client's EOF or a refusal meanwhile (``keep_alive``) leaves
        only the requests already queued.  After a refusal the close lingers.
        """
        phase = self.phase
        if phase is CLOSED or phase is TUNNELLED or phase is DRAINING:
            return False
        if keep and (self.keep_alive or self.queue):
            self.phase = IDLE
            return True
        self.phase = DRAINING
        if self.refusal is not None:
            self._close_lingering()
        else:
            self._close()
        return False

    async def _exchange(self, request: Request, head: RequestHead) -> bool:
        """One request on the general path (meshctl_proxy.transport.exchange), answered; keep-alive."""
        loop = self.loop
        path = self.path
        # Outbound series are labelled by the endpoint's hop, known once the exchange has answered.
        stats = None if path.outbound else path.counted(request.authority)
        start = loop.time()
        exchange = Exchange(path, request, start)
        try:
            response = await exchange.run()
        except BodyError:
            self.watched = exchange.watched
            if self.refusal is not None:
                if stats is None:
                    stats = path.counted(request.authority)
                stats.response(self.refusal.status, "failure", (loop.time() - start) * 1000)
                self.phase = RESPONDING
                self._write(http1.error_response(self.refusal.status, self.refusal.reason))
                self._watch_end(None, error=self.refusal.reason, status=self.refusal.status)
                return False
            response = ProxyError(502, "request body failed").response()
        self.watched = exchange.watched
        latency_ms = (loop.time() - start) * 1000
        status = response.status
        self.phase = RESPONDING
        if stats is None:
            stats = path.counted(request.authority, response.endpoint)

        if status == 101 and response.upgraded is not None:
            stats.response(101, "success", latency_ms)
            self._watch_end(response)
            self._start_tunnel(response)
            return False

        keep = self._respond_now(head, response, stats, latency_ms)
        if keep is None:
            keep = await self._respond_streaming(head, response, stats, latency_ms)
        return self._after_response(request, keep)

    def _watch_end(self, response: Response | None, *, error: str | None = None, status: int | None = None) -> None:
        """The request in flight is over (answered, failed or abandoned): its watches end, once."""
        watched = self.watched
        if watched is None:
            return
        self.watched = None
        end_watch(watched, self.loop.time(), response, error, status)

    def _respond_now(self, head: RequestHead, response: Response, stats, latency_ms: float) -> bool | None:
        """Write the whole response in one write when its body is already here (keep-alive); None when it
        must stream."""
        whole = whole_response(head, response, self.keep_alive)
        if whole is None:
            return None
        out, keep = whole
        self._write(out)
        stats.record(response, latency_ms)
        if self.watched is not None:
            self._watch_end(response)
        return keep

    async def _respond_streaming(self, head: RequestHead, response: Response, stats, latency_ms: float) -> bool:
        if self.watched is not None:
            self.watched.response(response.status, self.loop.time())
        try:
            keep = await stream_response(self, head, response, self.keep_alive)
        except BodyError:
            # The upstream failed mid-body: HTTP/1 can only say so by cutting the connection.
            stats.response(response.status, "failure", latency_ms)
            self._watch_end(response, error="upstream failed mid-body")
            self._abort()
            return False
        stats.record(response, latency_ms)
        self._watch_end(response)
        return keep

    def _after_response(self, request: Request, keep: bool) -> bool:
        if not request.body.complete:
            keep = False  # the next request's start is unknown until this body ends
        if self.tunnel_buf is not None:  # the upgrade was refused: the tail is ordinary HTTP
            tail, self.tunnel_buf = b"".join(self.tunnel_buf), None
            try:
                self._on_events(self.reader.after_upgrade_refused(tail))
            except H1Error as exc:
                self._refuse(exc)
                return False
        return keep

    def respond_fast(self, request: Request, head: RequestHead, response: Response, stats,
                     latency_ms: float) -> None:
        """The fast path's answer (h1_fast): written now when it is whole, else by a task; then it is over."""
        self.phase = RESPONDING
        keep = self._respond_now(head, response, stats, latency_ms)
        if keep is None:
            self.stream_task = self.loop.create_task(self._respond_fast_streaming(request, head, response, stats,
                                                                                latency_ms))
        elif self._exchange_over(self._after_response(request, keep)) and self.queue:
            self._wake()

    async def _respond_fast_streaming(self, request, head, response, stats, latency_ms) -> None:
        try:
            keep = await self._respond_streaming(head, response, stats, latency_ms)
        except ConnectionError:
            keep = False
        if self._exchange_over(self._after_response(request, keep)) and self.queue:
            self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _start_tunnel(self, response: Response) -> None:
        """101 Switching Protocols: from now on both connections are an opaque pipe (h1_tunnel)."""
        upgraded = response.upgraded
        assert isinstance(upgraded, Upgraded)
        self.phase = TUNNELLED
        headers = response.headers + [(b"connection", b"upgrade"), (b"upgrade", upgraded.protocol_name)]
        self._write(http1.response_head(101, response.reason, headers))
        self.rt.connections.discard(self)
        pending = b"".join(self.tunnel_buf or [])
        self.tunnel_buf = None
        self._outbox.flush()  # the 101 goes before anything the tunnel writes
        start_tunnel(self.transport, self.stats, upgraded, pending, on_closed=self._tunnel_closed)

    def _tunnel_closed(self) -> None:
        self.phase = CLOSED
