"""HTTP/1.x from clients: the accepted connection and its phase, the one place its state changes.

:class:`H1ServerConnection` parses what the client sends (the framing rules
live in :mod:`meshctl_proxy.wire.http1`, sans-IO) and moves through its
:class:`Phase`; every change of phase is a method here.  The jobs around it,
each in its own module: the request as forwarded (``h1_request``), the fast
path (``h1_fast``: sent from the parser callback) and the general path
(``h1_general``: a task, through the exchange), writing and counting the
response (``h1_response``), the 101 tunnel (``h1_tunnel``); the upstream
side is ``h1_client``.  asyncio Protocols rather than streams: the
per-request path is a parser callback, a dict lookup and a write, with one
coroutine per connection (profiling showed StreamReader/StreamWriter costing
about a third of the request time).
"""

from __future__ import annotations

import asyncio
import enum

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.hooks import Watched
from meshctl_proxy.model import ConnectionContext, Request, Response
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.connection import FlowControl
from meshctl_proxy.transport.exchange import RequestPath, end_watch
from meshctl_proxy.transport.h1_connection import HeldWrites
from meshctl_proxy.transport.h1_fast import FastPath
from meshctl_proxy.transport.h1_general import GeneralPath
from meshctl_proxy.transport.h1_request import RequestMaker
from meshctl_proxy.transport.h1_response import close_lingering, write_response
from meshctl_proxy.transport.h1_tunnel import start_tunnel
from meshctl_proxy.transport.outbox import outbox
from meshctl_proxy.wire import http1
from meshctl_proxy.wire.http1 import End, H1Error, RequestHead, Upgrade

# Pipelined requests waiting behind the one in flight before we stop reading.
MAX_PIPELINED = 16


class Phase(enum.Enum):
    """Where a client connection is in its request cycle (h11 keeps the same in its connection states).

    ::

        IDLE --request taken (fast path: from data_received; general path: off the queue)--> EXCHANGING
        EXCHANGING --the answer is written--> RESPONDING --written, keep-alive--> IDLE
                                                          --written, closing--> DRAINING
        EXCHANGING --the upstream switched protocols (101)--> TUNNELLED
        IDLE --drain, the client's EOF, a refusal, with nothing queued--> DRAINING
        any --the transport is gone--> CLOSED

    ``keep_alive`` False (a drain, the client's EOF, a refusal) means no request
    starts after those already queued: the exchange in flight, if any, ends in
    DRAINING.
    """

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
    ``keep_alive`` turns False once no further request may start;
    ``refusal`` is the error a refused request is answered with (then the
    close lingers, RFC 9112 section 9.6); ``queue`` the requests waiting for
    the general path; ``tunnel_buf`` what the client sent after an Upgrade
    request, held until the upstream answers it.
    """

    def __init__(self, runtime, ctx: ConnectionContext, stats: TcpStats) -> None:
        FlowControl.__init__(self)
        self.rt = runtime
        self.ctx = ctx
        self.stats = stats
        self.path = RequestPath(runtime, ctx)
        marker = runtime.loop_markers[ctx.direction]
        self.reader = http1.RequestReader((marker,))
        self.requests = RequestMaker(ctx, (b"via", marker.entry("http/1")))  # the requests as forwarded
        self.fast = FastPath(self)
        self.general = GeneralPath(self)
        self.transport = None
        self.phase = IDLE
        self.keep_alive = True
        self.refusal: H1Error | None = None
        self.queue: list[tuple[Request, RequestHead]] = []
        self.current_body: Body | None = None  # the request body being received
        self.tunnel_buf: list[bytes] | None = None
        self.watched: Watched | None = None  # the hook's watches of the request in flight (meshctl_proxy.hooks)
        self._head_timer: asyncio.TimerHandle | None = None  # runs while a request head is incomplete
        self.stream_task: asyncio.Task | None = None  # a fast exchange's connect or retry; a streamed answer

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
        self.general.start(loop)

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
            self.general.wake()

    def eof_received(self) -> bool:
        if self.tunnel_buf is not None:
            return True
        if self.refusal is not None:  # lingering after a refusal: the client is done too
            self.transport.close()
            return True
        if self.current_body is not None:
            self.current_body.abort(BodyError("client closed mid-body"))
        self._no_more_requests()  # the client may have half-closed: the response in flight still goes
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
        for task in (self.general.task, self.stream_task):
            if task is not None and not task.done():
                task.cancel()
        self.fail_drain_waiters(ConnectionResetError("client disconnected"))
        self.watch_end(None, error="client disconnected")

    def _interim(self, status: int, headers) -> None:
        """Relay 100 Continue (RFC 9110 section 15.2) while the final response is pending."""
        if self.phase is EXCHANGING:
            self._write(http1.response_head(status, b"", headers))

    # -- no more requests: a drain, the client's EOF, a refusal ---------------------------
    def drain(self) -> None:
        """Graceful shutdown: finish the response in flight, then close."""
        self.keep_alive = False
        if self.transport is not None:
            self._no_more_requests()

    def _refuse(self, exc: H1Error) -> None:
        """A request we will not forward: 400/408/431/501/505, then close (RFC 9112 section 9.6)."""
        self.refusal = exc
        if self.current_body is not None:
            self.current_body.abort(BodyError(exc.reason))
            self.current_body = None
        # With nothing in flight the refusal is this connection's last word; otherwise the exchange in
        # flight ends it (its response says close, or its failed body gets the refusal).
        self._no_more_requests()

    def _no_more_requests(self) -> None:
        self.keep_alive = False
        if self.phase is IDLE and not self.queue:
            if self.refusal is not None:
                self._write(http1.error_response(self.refusal.status, self.refusal.reason))
            self._end()
        self.general.wake()

    def _end(self) -> None:
        """DRAINING: close, lingering after a refusal so that a reset does not destroy it (h1_response)."""
        self.phase = DRAINING
        if self.refusal is not None:
            self._outbox.flush()
            close_lingering(self.transport, self.loop)
        else:
            self._close()

    # -- the request cycle (the paths call these) -------------------------------------------
    def next_request(self) -> tuple[Request, RequestHead] | None:
        """The general path takes the next queued request (EXCHANGING), if the connection is IDLE."""
        if self.phase is not IDLE or not self.queue:
            return None
        queued = self.queue.pop(0)
        if len(self.queue) == MAX_PIPELINED:
            self.transport.resume_reading()
        self.phase = EXCHANGING
        return queued

    def expects_more(self) -> bool:
        """Something is in flight, or another request may come."""
        phase = self.phase
        return phase is EXCHANGING or phase is RESPONDING or (phase is IDLE and self.keep_alive)

    def respond(self, request: Request, head: RequestHead, response: Response, stats, latency_ms: float) -> None:
        """Write the answer to the request in flight (RESPONDING): h1_response calls response_written after."""
        self.phase = RESPONDING
        write_response(self, request, head, response, stats, latency_ms)

    def respond_refusal(self) -> None:
        """The request in flight failed because the client's stream was refused: the refusal answers it."""
        self.phase = RESPONDING
        self._write(http1.error_response(self.refusal.status, self.refusal.reason))
        self.watch_end(None, error=self.refusal.reason, status=self.refusal.status)
        self._end()

    def response_written(self, request: Request, keep: bool) -> None:
        """The exchange in flight is over: IDLE again, else DRAINING.

        *keep*: the response allows another request; after a drain, the
        client's EOF or a refusal only the requests already queued are served.
        """
        if not request.body.complete:
            keep = False  # the next request's start is unknown until this body ends
        if self.tunnel_buf is not None:  # the upgrade was refused: the tail is ordinary HTTP
            tail, self.tunnel_buf = b"".join(self.tunnel_buf), None
            try:
                self._on_events(self.reader.after_upgrade_refused(tail))
            except H1Error as exc:
                self._refuse(exc)
                keep = False
        if self.phase is not RESPONDING:  # closed meanwhile
            return
        if keep and (self.keep_alive or self.queue):
            self.phase = IDLE
            if self.queue:
                self.general.wake()
        else:
            self._end()

    def watch_end(self, response: Response | None, *, error: str | None = None, status: int | None = None) -> None:
        """The request in flight is over (answered, failed or abandoned): its watches end, once."""
        watched = self.watched
        if watched is None:
            return
        self.watched = None
        end_watch(watched, self.loop.time(), response, error, status)

    def start_tunnel(self, response: Response) -> None:
        """101 Switching Protocols (TUNNELLED): from now on both connections are an opaque pipe (h1_tunnel)."""
        self.watch_end(response)
        self.phase = TUNNELLED
        self.rt.connections.discard(self)
        pending = b"".join(self.tunnel_buf or [])
        self.tunnel_buf = None
        start_tunnel(self, response, pending, on_closed=self._tunnel_closed)

    def _tunnel_closed(self) -> None:
        self.phase = CLOSED
