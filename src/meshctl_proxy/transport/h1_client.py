"""HTTP/1.1 to upstreams: one pooled connection per exchange at a time, and the pool.

:class:`H1ClientConnection` sends a request and reads the response
(framing in :mod:`meshctl_proxy.wire.http1`); the fast path
(:mod:`~meshctl_proxy.transport.h1_fast`) gets the response by callback from
its ``data_received``, the general path awaits :meth:`H1ClientConnection.exchange`.
:class:`H1Pool` keeps the idle ones per endpoint (keep-alive reuse).  A
connection closed before any response byte is :class:`UpstreamClosed`, which
says whether the request may be sent again (``exchange.replayable``).
"""

from __future__ import annotations

import asyncio
import logging

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.model import Endpoint, ProxyError, Request, Response
from meshctl_proxy.policy.router import EndpointPool
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.connection import FlowControl
from meshctl_proxy.transport.h1_connection import HeldWrites
from meshctl_proxy.transport.h1_tunnel import Upgraded
from meshctl_proxy.transport.outbox import outbox
from meshctl_proxy.wire import http1
from meshctl_proxy.wire.http1 import End, H1Error, Interim, ResponseHead, Upgrade

log = logging.getLogger("meshctl_proxy.wire.http1")


class UpstreamClosed(ProxyError):
    """The upstream closed before answering.  On a reused connection it had not begun with the request (a
    keep-alive connection the server closed as it was reused), so it may be sent again (exchange.replayable)."""

    def __init__(self, reason: str, *, unprocessed: bool) -> None:
        super().__init__(502, reason)
        self.unprocessed = unprocessed


class H1ClientConnection(HeldWrites):
    """One pooled upstream HTTP/1.1 connection; one exchange at a time."""

    def __init__(self, pool: "H1Pool", endpoint: Endpoint, stats: TcpStats) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.stats = stats
        self.transport = None
        self.reader = http1.ResponseReader()
        self.closed = False
        self.request: Request | None = None
        self.body: Body | None = None
        self.response: Response | None = None
        self.keep = False
        self.close_delimited = False
        self.request_done = True
        self.response_done = True
        FlowControl.__init__(self)
        self._waiter: asyncio.Future | None = None
        self.body_task: asyncio.Task | None = None
        self._callback = None  # fast path: called with the response instead of resolving a future
        self.reused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self._outbox = outbox(self.loop)
        self._pause, self._resume = transport.pause_reading, transport.resume_reading  # each body's backpressure
        self.stats.opened += 1

    def data_received(self, data: bytes) -> None:
        self.stats.read_bytes += len(data)
        try:
            events = self.reader.feed(data)
        except H1Error as exc:
            self._fail(ProxyError(502, f"malformed upstream response: {exc.reason}"))
            return
        self._process(events)
        if self._callback is not None and self.response is not None:
            # After all events of this read: a small body is complete by now and goes out in one write.
            self._fire(self.response, None)

    def _process(self, events: list) -> None:
        for ev in events:
            t = type(ev)
            if t is bytes:
                self.body.feed(ev)
            elif t is ResponseHead:
                if self._on_head(ev) is False:
                    return  # the connection is dropped: the rest of this read is not anyone's response
            elif t is End:
                self._on_end(ev)
            elif t is Interim:
                if self.request is not None and self.request.interim is not None:
                    self.request.interim(ev.status, ev.headers)
            elif t is Upgrade:
                if self.response is not None and self.response.status == 101:
                    self.transport.pause_reading()
                    self.response.upgraded = Upgraded(self.transport, ev.tail,
                                                      self.request.upgrade or b"", self.stats)
                    self.pool.forget(self)

    def _on_head(self, head: ResponseHead) -> bool:
        """False when the connection is dropped (the rest of the read is nobody's response)."""
        if self.response_done or self.request is None:
            # A response nobody asked for (a second one after the first, or on an idle pooled connection):
            # the upstream is out of step, and whatever it says next would answer the next client's
            # request.  Closed, as hyper does ("unexpected message"); the response already relayed stands.
            log.warning("upstream %s sent a response nobody asked for: connection closed", self.endpoint.addr)
            self.keep = False
            self.pool.forget(self)
            self._abort()
            return False
        status = head.status
        if status == 101 and (self.request is None or self.request.upgrade is None):
            self._fail(ProxyError(502, "upstream switched protocols unasked"))
            return True
        self.keep = head.keep_alive
        if (head.content_length == 0 or status in (204, 304) or status == 101
                or (self.request is not None and self.request.method == b"HEAD")):
            body = EMPTY
        else:
            body = Body(head.content_length, pause=self._pause, resume=self._resume)
            self.close_delimited = head.content_length is None and not head.chunked
        self.body = body
        self.response = Response(status, head.headers, body, head.reason, endpoint=self.endpoint)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self.response)
        return True

    def _on_end(self, ev: End) -> None:
        body = self.body
        if body is not None and body is not EMPTY:
            if body._paused:  # the consumer is behind: keep this connection out of the pool
                self.keep = False
            body.finish(ev.trailers)
        self.response_done = True
        if self.response is not None and self.response.status == 101:
            return
        self._maybe_release()

    def _maybe_release(self) -> None:
        if not (self.response_done and self.request_done) or self.closed:
            return
        self.request = None
        if self.keep and not self.reader.no_reuse:
            self.pool.release(self)
        else:
            self._close()

    def _fail(self, exc: ProxyError) -> None:
        if self._callback is not None and self.response is None:
            self._fire(None, exc)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.body is not None and not self.response_done:
            self.body.abort(BodyError(exc.reason))
        self.keep = False
        if self.transport is not None:
            self._abort()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.stats.closed += 1
        self.pool.forget(self)
        if self._callback is not None and self.response is None:
            self._fire(None, UpstreamClosed("upstream closed the connection before responding",
                                            unprocessed=self.reused))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamClosed("upstream closed the connection before responding",
                                                unprocessed=self.reused))
        if self.body is not None and not self.response_done:
            if self.close_delimited and exc is None:
                self.body.finish()  # RFC 9112 section 6.3: the body ends when the server closes
            else:
                self.body.abort(BodyError("upstream closed mid-body"))
            self.response_done = True
        self.fail_drain_waiters(ConnectionResetError("upstream closed"))
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()

    def start_exchange(self, request: Request, callback) -> None:
        """Send *request*; ``callback(response, None)`` once its head (and any body already read) is in,
        or ``callback(None, exc)`` if it fails first.  Called from our data_received: no task."""
        self._callback = callback
        self._send_request(request, self.loop, None)

    def _fire(self, response: Response | None, exc: BaseException | None) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            try:
                callback(response, exc)
            except Exception:
                log.exception("fast-path response failed")

    async def exchange(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._send_request(request, loop, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if self._waiter is waiter:  # still our exchange: its state on the wire is unknown
                self.keep = False
                self._abort()
            raise
        finally:
            # The connection may already be back in the pool and carrying the
            # next exchange (released on End, before this task resumed): its
            # waiter is not ours to clear.
            if self._waiter is waiter:
                self._waiter = None

    def _send_request(self, request: Request, loop, waiter) -> None:
        self.request = request
        self.response = None
        self.body = None
        self.close_delimited = False
        self.response_done = False
        self.reader.expect(request.method)
        body = request.body
        chunked = body is not EMPTY and body.length is None
        headers = request.headers
        if request.upgrade is not None:
            headers = headers + [(b"connection", b"upgrade"), (b"upgrade", request.upgrade)]
        out = http1.request_head(request.method, request.target, headers, chunked=chunked)
        if body is EMPTY:
            self.request_done = True
            self._write(out)
        else:
            self.request_done = False
            data = body.read_nowait()
            if data is not None and body.done:  # the whole body is here: one write, no task
                if chunked:
                    out += (http1.chunk(data) if data else b"") + http1.last_chunk(body.trailers)
                else:
                    out += data
                self._write(out)
                self.request_done = True
            else:
                if data:
                    out += http1.chunk(data) if chunked else data
                self._write(out)
                self.body_task = loop.create_task(self._send_body(body, chunked))

    async def _send_body(self, body: Body, chunked: bool) -> None:
        try:
            while True:
                data = await body.read()
                if not data:
                    break
                self._write(http1.chunk(data) if chunked else data)
                if self.write_paused:
                    await self.drained()
            if chunked:
                self._write(http1.last_chunk(body.trailers))
            self.request_done = True
            self._maybe_release()
        except BodyError as exc:
            # The client's body failed: the upstream request cannot be completed.
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            if self.body is not None and not self.response_done:
                self.body.abort(BodyError("request body failed"))
            self.keep = False
            self._abort()
        except (ConnectionError, asyncio.CancelledError):
            pass


class H1Pool(EndpointPool):
    """Idle upstream HTTP/1.1 connections per endpoint (keep-alive reuse): ``conns`` holds the idle ones."""

    # Per endpoint.  Enough for a busy sidecar's fan-out; more are closed on release.
    MAX_IDLE = 128

    def release(self, conn: H1ClientConnection) -> None:
        idle = self.conns.get(conn.endpoint)
        if idle is None:
            idle = self.conns[conn.endpoint] = []
        elif len(idle) >= self.MAX_IDLE:
            conn.transport.close()
            return
        conn.reused = True
        idle.append(conn)
        self.park(conn, conn.loop.time())

    def take_idle(self, endpoint: Endpoint) -> H1ClientConnection | None:
        idle = self.conns.get(endpoint)
        while idle:
            conn = idle.pop()
            self.unpark(conn)
            if not conn.closed:
                return conn
        return None

    async def connect(self, endpoint: Endpoint, authority: str | None) -> H1ClientConnection:
        return await self.dial(endpoint, authority, H1ClientConnection, alpn=["http/1.1"])

    async def send(self, request: Request, endpoint: Endpoint, *, fresh: bool = False) -> Response:
        """One attempt: on an idle connection, else (or when *fresh*: the retry after a stale one) a new one."""
        conn = None if fresh else self.take_idle(endpoint)
        if conn is None:
            conn = await self.connect(endpoint, request.authority)
        return await conn.exchange(request)
