"""The proxy's upstream HTTP/2 connections and their pool: one per endpoint, every request to it multiplexed.

An HTTP/2 request goes upstream as HTTP/2 (gRPC needs trailers end to end).  A
reset travels back with its error code (``UpstreamReset`` before the response,
``StreamReset`` in its body); a client's reset cancels the upstream stream
(``cancel``, RFC 9113 section 8.7).  A GOAWAY from upstream refuses the streams
it did not process (libnghttp2 closes them with REFUSED_STREAM, which the
exchange sends again once, ``exchange.replayable``) and puts the connection in
``Phase.DRAINING``: the pool hands it out no more.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import ngh2
from ngh2 import (DataReceived, GoAwayReceived, NGH2Error, ResponseReceived, Role, SettingsReceived, StreamClosed,
                  TrailersReceived, WindowUpdated)

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.model import Endpoint, ProxyError, Request, Response
from meshctl_proxy.policy.router import EndpointPool
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.h2_connection import (CANCEL, CLOSED, DRAINING, MAX_HEADER_LIST_SIZE, OPEN,
                                                   PROTOCOL_ERROR, STREAM_WINDOW, H2Connection, StreamReset,
                                                   UpstreamReset)
from meshctl_proxy.wire.h2headers import h2_fields

log = logging.getLogger("meshctl_proxy.http2")

_MAX_CONCURRENT_STREAMS = int(ngh2.Setting.MAX_CONCURRENT_STREAMS)
_StreamResetEvent = ngh2.StreamReset
_CLIENT_CONFIG = ngh2.Configuration(auto_window_update=False, max_inbound_header_list_size=MAX_HEADER_LIST_SIZE)


class _ClientStream:
    __slots__ = ("id", "waiter", "on_response", "body", "body_task", "response")

    def __init__(self, stream_id: int, waiter: asyncio.Future | None, on_response=None) -> None:
        self.id = stream_id
        self.waiter = waiter  # send(): the awaiting coroutine's future
        self.on_response = on_response  # start(): called once instead
        self.body: Body | None = None
        self.body_task: asyncio.Task | None = None
        self.response: Response | None = None

    def settle(self, response: Response | None, exc: BaseException | None = None) -> bool:
        """Hand the response (or the failure) over; False when that was done already."""
        callback = self.on_response
        if callback is not None:
            self.on_response = None
            callback(response, exc)
            return True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return False
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(response)
        return True


class H2ClientConnection(H2Connection):
    """One upstream HTTP/2 connection, shared by every request to its endpoint."""

    def __init__(self, pool: "H2Pool", endpoint: Endpoint, stats: TcpStats) -> None:
        super().__init__()
        self.pool = pool
        self.endpoint = endpoint
        self.stats = stats
        self.conn = ngh2.Connection(Role.CLIENT, _CLIENT_CONFIG)
        self.streams: dict[int, _ClientStream] = {}
        self.max_streams = 100  # the server's SETTINGS_MAX_CONCURRENT_STREAMS, as libnghttp2 assumes until it comes
        self.last_used = 0.0  # loop time the pool last handed it out (its idle timeout counts from there)
        self.answered: list[_ClientStream] = []
        # Request bodies being sent, by stream: a stream can outlive its entry in self.streams (the
        # response is complete, the request is not) and its sender must stop when the stream closes.
        self.body_tasks: dict[int, asyncio.Task] = {}

    def connection_made(self, transport) -> None:
        self.stats.opened += 1
        log.debug("h2 upstream %s: connected", self.endpoint.addr)
        self._open(transport, {
            ngh2.Setting.ENABLE_PUSH: 0,
            ngh2.Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            ngh2.Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })

    def _receive_failed(self, exc: NGH2Error) -> None:
        log.info("h2 upstream %s: protocol error: %s", self.endpoint.addr, exc)
        self._fail(UpstreamReset(PROTOCOL_ERROR))  # libnghttp2 will not be asked anything more
        self.transport.abort()

    def _on_events(self, events: list) -> None:
        streams = self.streams
        for ev in events:
            t = type(ev)
            if t is DataReceived:
                st = streams.get(ev.stream_id)
                if st is None or st.body is None:  # cancelled or refused: the connection's credit comes back
                    self.ack(ev.stream_id, len(ev.data))
                    continue
                body = st.body
                body.feed(ev.data)
                if ev.end_stream:
                    del streams[ev.stream_id]
                    body.finish()
                elif body.discarded:  # nobody will read the rest: stop the upstream (RFC 9113 section 8.7)
                    self.cancel(ev.stream_id)
            elif t is ResponseReceived:
                self._on_response(ev)
            elif t is StreamClosed:
                st = streams.pop(ev.stream_id, None)
                if st is not None:  # closed before we saw its end: libnghttp2 refused or reset it
                    self._on_closed(st, ev)
                if self.body_tasks:
                    task = self.body_tasks.pop(ev.stream_id, None)
                    if task is not None:  # nothing more can be sent on it (it would wait for credit forever)
                        task.cancel()
                        self.window_waiters.pop(ev.stream_id, None)
            elif t is TrailersReceived:
                st = streams.pop(ev.stream_id, None)
                if st is not None and st.body is not None:
                    st.body.finish(list(ev.headers))
            elif t is _StreamResetEvent:
                st = streams.pop(ev.stream_id, None)
                if st is not None:
                    self._fail_stream(st, ev.error_code)
            elif t is WindowUpdated:
                self.wake_windows(ev.stream_id)
            elif t is SettingsReceived:
                limit = ev.settings.get(_MAX_CONCURRENT_STREAMS)
                if limit is not None:
                    self.max_streams = limit
                self.wake_windows(0)
            elif t is GoAwayReceived:
                # libnghttp2 closes the streams the server will not process (above last_stream_id)
                # with REFUSED_STREAM: the exchange sends those again (once) on another connection.
                self._enter(DRAINING)
                self.pool.forget(self)
        if self.answered:
            answered, self.answered = self.answered, []
            for st in answered:
                st.settle(st.response)

    def _ended(self, data: bytes) -> None:
        if data:
            self._write(data)
        if self.phase is OPEN:
            # libnghttp2 ended the connection (a protocol error by the server): nothing more comes.
            self._fail(UpstreamReset(PROTOCOL_ERROR))
            self.transport.close()

    def _on_closed(self, st: _ClientStream, ev) -> None:
        code = ev.error_code
        if code == PROTOCOL_ERROR and st.response is None:
            # libnghttp2 found the response head malformed (RFC 9113 section 8.1.1) and reset the stream.
            reason = str(ev.local_error) if ev.local_error is not None else "invalid header block"
            log.info("h2 upstream %s: stream %d: malformed response: %s", self.endpoint.addr, st.id, reason)
            st.settle(None, ProxyError(502, f"upstream sent a malformed response: {reason}"))
            if st.body_task is not None and not st.body_task.done():
                st.body_task.cancel()
            return
        if code == PROTOCOL_ERROR:
            log.info("h2 upstream %s: stream %d: malformed response body or trailers", self.endpoint.addr, st.id)
        self._fail_stream(st, code or CANCEL)

    def _on_response(self, ev) -> None:
        sid = ev.stream_id
        st = self.streams.get(sid)
        if st is None:
            return
        headers = ev.headers
        # libnghttp2 checked the block: :status (three digits) comes first and is the only pseudo-header.
        status = int(headers[0][1])
        if ev.end_stream:
            body = EMPTY
            del self.streams[sid]
        else:
            body = Body(None, on_consumed=partial(self.ack, sid), high_water=STREAM_WINDOW)
        st.body = body
        st.response = Response(status, headers[1:], body, b"", self.endpoint)
        if st.on_response is not None:
            self.answered.append(st)  # handed over after this read's events: its body may be in them
        else:
            st.settle(st.response)

    def _fail_stream(self, st: _ClientStream, code: int) -> None:
        if not st.settle(None, UpstreamReset(code)) and st.body is not None:
            # The connection goes on: the credit of what was buffered must come back to it.
            st.body.discard(StreamReset(code, "upstream reset the stream"))
        if st.body_task is not None and not st.body_task.done():
            st.body_task.cancel()

    def _fail(self, exc: ProxyError) -> None:
        """The connection carries nothing more: CLOSED, out of the pool, and every open stream fails with *exc*."""
        self._enter(CLOSED)
        self.pool.forget(self)
        streams = list(self.streams.values())
        self.streams.clear()
        tasks, self.body_tasks = self.body_tasks, {}
        for task in tasks.values():
            task.cancel()
        for st in streams:
            if not st.settle(None, exc) and st.body is not None:
                st.body.abort(StreamReset(CANCEL, "upstream connection lost"))
            if st.body_task is not None and not st.body_task.done():
                st.body_task.cancel()

    def _gone(self) -> None:
        self._fail(ProxyError(502, "upstream connection lost"))

    @staticmethod
    def _head(request: Request) -> list[tuple[bytes, bytes]]:
        return [(b":method", request.method), (b":scheme", request.scheme),
                (b":authority", request.authority.encode("latin-1")), (b":path", request.target),
                *h2_fields(request.headers, skip=b"host")]

    def start(self, request: Request, on_response) -> int | None:
        """Send a bodiless request; ``on_response(response, exc)`` is called once, from this connection's
        callbacks (the direct path).  The stream id, or None when libnghttp2 would not open a stream now."""
        try:
            sid = self.conn.send_request(self._head(request), end_stream=True)
        except NGH2Error:
            return None
        self.streams[sid] = _ClientStream(sid, None, on_response)
        if not self.flush_scheduled:
            self.flush_soon()
        return sid

    async def send(self, request: Request) -> Response:
        body = request.body
        sid = self.conn.send_request(self._head(request), end_stream=body is EMPTY)
        waiter = self.loop.create_future()
        st = self.streams[sid] = _ClientStream(sid, waiter)
        self.flush_soon()
        if body is not EMPTY:
            st.body_task = self.body_tasks[sid] = self.loop.create_task(self._send_body(st, body))
        try:
            return await waiter
        except asyncio.CancelledError:
            # The client went away (or reset): cancel upstream too, RFC 9113 section 8.7.
            self.cancel(sid)
            raise

    def cancel(self, sid: int) -> None:
        """Forget stream *sid* and reset it (CANCEL): nobody wants its response any more."""
        st = self.streams.pop(sid, None)
        if st is not None:
            if st.body_task is not None and not st.body_task.done():
                st.body_task.cancel()
            if st.body is not None:
                st.body.discard()
        self.reset(sid, CANCEL)

    async def _send_body(self, st: _ClientStream, body: Body) -> None:
        sid = st.id
        try:
            await self.send_body(sid, body)
        except StreamReset as exc:  # the client reset: so do we, with its code
            self._reset_upstream(sid, exc.code)
        except BodyError:
            self._reset_upstream(sid, CANCEL)
        except (asyncio.CancelledError, ConnectionError, NGH2Error):
            pass
        finally:
            self.body_tasks.pop(sid, None)

    def _reset_upstream(self, sid: int, code: int) -> None:
        st = self.streams.pop(sid, None)
        if st is not None:
            st.settle(None, BodyError("request body failed"))
            if st.body is not None:
                st.body.discard()
        self.reset(sid, code)


class H2Pool(EndpointPool):
    """One multiplexed upstream connection per endpoint (more when one is full or going away)."""

    def __init__(self, connector, metrics, direction: str, *, connect_timeout: float, **idle) -> None:
        super().__init__(connector, metrics, direction, connect_timeout=connect_timeout, **idle)
        self._connecting: dict[Endpoint, asyncio.Future] = {}

    def usable(self, endpoint: Endpoint) -> H2ClientConnection | None:
        """A connection to *endpoint* with room for one more stream, if one is open."""
        for conn in self.conns.get(endpoint, ()):
            if conn.phase is OPEN and len(conn.streams) < conn.max_streams:
                conn.last_used = conn.loop.time()
                return conn
        return None

    def _sweep_soon(self, delay: float) -> None:
        if self._expiry is not None:
            if delay:
                return
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        """Close connections without a stream for idle_timeout, and the longest idle past max_idle
        (EndpointPool's bounds; an HTTP/2 connection is idle while no stream is open on it)."""
        self._expiry = None
        now = asyncio.get_running_loop().time()
        idle = sorted((conn for conns in self.conns.values() for conn in conns
                       if not conn.streams and not conn.body_tasks), key=lambda conn: conn.last_used)
        excess = len(idle) - self.max_idle
        for i, conn in enumerate(idle):
            if i < excess or now - conn.last_used >= self.idle_timeout:
                self.evict(conn)
        if self.conns:
            self._sweep_soon(self.idle_timeout / 2)

    async def _connect(self, endpoint: Endpoint, authority: str) -> H2ClientConnection:
        pending = self._connecting.get(endpoint)
        if pending is not None:  # share one handshake among requests that arrive together
            return await asyncio.shield(pending)
        fut = self._connecting[endpoint] = asyncio.get_running_loop().create_future()
        try:
            conn = await self.dial(endpoint, authority, H2ClientConnection, alpn=["h2"])
        except ProxyError as err:
            exc = err
        else:
            self.conns.setdefault(endpoint, []).append(conn)
            conn.last_used = conn.loop.time()
            if len(self.conns) > self.max_idle:  # respelt or many endpoints: enforce the cap now
                self._sweep_soon(0)
            else:
                self._sweep_soon(self.idle_timeout / 2)
            fut.set_result(conn)
            del self._connecting[endpoint]
            return conn
        del self._connecting[endpoint]
        fut.set_exception(exc)
        fut.exception()  # retrieved: waiters re-raise it themselves
        raise exc

    async def send(self, request: Request, endpoint: Endpoint, *, fresh: bool = False) -> Response:
        """One attempt, on a connection with stream room (a new one when none has).  *fresh* (the retry after
        REFUSED_STREAM) picks the same way: the refusal came from a live connection, at its stream limit or
        shedding load, whose room is known again."""
        conn = self.usable(endpoint)
        if conn is None:
            conn = await self._connect(endpoint, request.authority)
        return await conn.send(request)
