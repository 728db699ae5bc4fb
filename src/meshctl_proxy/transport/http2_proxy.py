"""HTTP/2 with prior knowledge: the client-facing server connection and the pooled upstream client.

libnghttp2 (the HTTP/2 engine of nghttp2, curl and Apache httpd), through its
sans-IO binding ngh2, is the protocol machine; this module relays streams
between two of them.  An HTTP/2 request goes upstream as HTTP/2 (gRPC needs
trailers end to end), multiplexed over one connection per endpoint.  It
replaced the pure-Python h2 + hpack + hyperframe stack, which cost ~115 us of
CPU per proxied request by itself against ~5 us here (docs/performance.md).

Flow control holds end to end: libnghttp2's automatic WINDOW_UPDATEs are off,
DATA from one side is acknowledged only when the other side has taken it
(``Body(on_consumed=...)``), and we hand libnghttp2 only what fits the peer's
windows, waiting for its WINDOW_UPDATE otherwise (RFC 9113 section 5.2), so
the proxy never reads ahead of the slower side.

Resets travel both ways with their error code (a client's RST_STREAM cancels
the upstream stream; an upstream reset resets the client's stream).  A GOAWAY
from upstream refuses the streams it did not process (libnghttp2 closes them
with REFUSED_STREAM, which the pool retries once); a graceful drain sends
GOAWAY with the last stream id and serves the streams already open.

Abuse is answered with GOAWAY(ENHANCE_YOUR_CALM) and a close
(meshctl_proxy.wire.h2limits): rapid reset, PING and SETTINGS floods, streams
beyond SETTINGS_MAX_CONCURRENT_STREAMS.  libnghttp2 refuses the last one
itself, as RFC 9113 section 5.1.2 allows, with PROTOCOL_ERROR; the proxy
sends ENHANCE_YOUR_CALM in its place, as Go's and Envoy's servers answer
abuse, so every limit reads the same to a client.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import cast

import ngh2
from ngh2 import (ConnectionClosed, DataReceived, GoAwayReceived, NGH2Error, PingReceived, RequestReceived,
                  ResponseReceived, Role, SettingsReceived, StreamClosed, TrailersReceived, WindowUpdated)

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.wire.h2headers import LoopDetected, MalformedHeaders, h2_fields, request_fields
from meshctl_proxy.wire.loop_marker import LOOP_STATUS
from meshctl_proxy.wire.h2limits import MAX_RESETS_PER_SECOND, FloodGuard
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.model import ConnectionContext, Endpoint, ProxyError, Request, Response
from meshctl_proxy.policy.router import EndpointPool
from meshctl_proxy.hooks import Watched
from meshctl_proxy.transport.exchange import Exchange, RequestPath, end_watch
from meshctl_proxy.transport.outbox import outbox

log = logging.getLogger("meshctl_proxy.http2")

MAX_HEADER_LIST_SIZE = 64 * 1024  # as the HTTP/1 head limit
# Receive windows: what one stream, and the whole connection, may have in flight
# towards us (the RFC's 64 KiB default caps a stream at 64 KiB per round trip).
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1 << 20

# RFC 9113 section 7 error codes, as plain ints (the hot paths compare them).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB
_MAX_CONCURRENT_STREAMS = int(ngh2.Setting.MAX_CONCURRENT_STREAMS)
_STATUS = {code: b"%d" % code for code in range(100, 600)}
SMALL_BODY = 16 * 1024  # see H2ServerConnection._respond_now
_StreamResetEvent = ngh2.StreamReset

_SERVER_CONFIG = ngh2.Configuration(
    auto_window_update=False,  # credit goes back as the upstream takes the bytes (module docstring)
    max_inbound_header_list_size=MAX_HEADER_LIST_SIZE,
    # libnghttp2's own rapid-reset bucket (CVE-2023-44487), a backstop above FloodGuard's limit, which
    # answers first and with ENHANCE_YOUR_CALM; libnghttp2 would close with INTERNAL_ERROR.
    stream_reset_rate_limit=(10 * MAX_RESETS_PER_SECOND, 2 * MAX_RESETS_PER_SECOND),
)
_CLIENT_CONFIG = ngh2.Configuration(auto_window_update=False, max_inbound_header_list_size=MAX_HEADER_LIST_SIZE)


class StreamReset(BodyError):
    """A stream was reset by one side; ``code`` is carried to the other side."""

    def __init__(self, code: int, reason: str = "stream reset") -> None:
        super().__init__(f"{reason} (error code {int(code)})")
        self.code = code


class UpstreamReset(ProxyError):
    """The upstream reset the stream before responding: HTTP/2 clients see the reset itself."""

    def __init__(self, code: int) -> None:
        super().__init__(502, f"upstream reset the stream (error code {code})")
        self.code = code


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame (RFC 9113 section 6.8), for the closes the proxy writes itself."""
    payload = (last_stream_id & 0x7FFFFFFF).to_bytes(4, "big") + int(code).to_bytes(4, "big") + debug
    return len(payload).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00" + payload


def without_goaway(data: bytes) -> bytes:
    """*data* (whole frames from libnghttp2) less its GOAWAY frames: the proxy sends its own in their place."""
    out, pos, n = [], 0, len(data)
    while pos + 9 <= n:
        end = pos + 9 + int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] != 0x07:
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


class _Sender:
    """Hands DATA to libnghttp2 within the peer's flow-control windows and writes its output; both ends."""

    def __init__(self) -> None:
        self.conn: ngh2.Connection = None
        self.transport: asyncio.Transport | None = None  # set by connection_made
        self.window_waiters: dict[int, asyncio.Future] = {}
        self.write_paused = False
        # Every stream whose sender waits for the socket to drain has its own future here, and
        # resume_writing() wakes them all: one slot, as before, kept only the last waiter and the
        # others stopped mid-body for good (issue 13, class 11).
        self.drain_waiters: list[asyncio.Future] = []
        self.stats: TcpStats | None = None
        self.closed = False
        self.flush_scheduled = False
        self.pending = 0  # DATA bytes handed to libnghttp2 since the last flush (not yet off its windows)
        self.loop = asyncio.get_running_loop()
        self.outbox = outbox(self.loop)
        self._flusher = self._scheduled_flush  # one bound method, handed to the outbox per pass

    def flush(self) -> None:
        conn = self.conn
        data = conn.data_to_send()
        self.pending = 0
        if not self.closed:
            if not conn.want_read:
                self._ended(data)
            elif data:
                self._write(data)
        # Each end's data_received ends with a flush: the end of the callback (meshctl_proxy.transport.outbox).
        self.outbox.callback_done()

    def _write(self, data: bytes) -> None:
        self.stats.write_bytes += len(data)
        self.transport.write(data)

    def _ended(self, data: bytes) -> None:
        """libnghttp2 wants nothing more from the peer: a drain completed or it ended the connection.
        *data* is its last output; each end says what follows."""
        raise NotImplementedError

    def flush_soon(self) -> None:
        """Write what libnghttp2 has queued when the loop's outbox sends this pass's output
        (meshctl_proxy.transport.outbox): streams answered together share one write (a syscall
        per frame was the largest cost per request)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.outbox.flush_later(self._flusher)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        if not self.closed:
            self.flush()

    def window(self, stream_id: int) -> int:
        """How many more DATA bytes the peer's windows take on *stream_id* now."""
        conn = self.conn
        return min(conn.stream_remote_window_size(stream_id) - conn.queued_body_size(stream_id),
                   conn.remote_window_size - self.pending)

    def wake_windows(self, stream_id: int) -> None:
        if stream_id == 0:
            waiters, self.window_waiters = self.window_waiters, {}
            for fut in waiters.values():
                if not fut.done():
                    fut.set_result(None)
        else:
            fut = self.window_waiters.pop(stream_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def fail_waiters(self, exc: BaseException) -> None:
        waiters, self.window_waiters = self.window_waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        drains, self.drain_waiters = self.drain_waiters, []
        for fut in drains:
            if not fut.done():
                fut.set_exception(exc)

    async def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send *data* within the peer's windows; END_STREAM goes on its last frame.

        libnghttp2 would queue past the windows by itself; holding the rest here
        instead is what keeps the proxy from reading the other side ahead of this peer.
        """
        conn = self.conn
        view = memoryview(data)
        while view:
            if self.closed:
                raise ConnectionResetError("connection closed")
            window = self.window(stream_id)
            if window <= 0:
                fut = self.window_waiters[stream_id] = self.loop.create_future()
                await fut
                continue
            n = min(window, len(view))
            conn.send_data(stream_id, data if n == len(data) else bytes(view[:n]),
                           end_stream=end_stream and n == len(view))
            self.pending += n
            view = view[n:]
            self.flush_soon()
            if self.write_paused:
                await self._drained()

    async def send_body(self, stream_id: int, body: Body) -> None:
        """Relay *body* and end the stream: END_STREAM rides on the last DATA frame when no
        trailers follow (one frame fewer than an empty DATA frame after it)."""
        while data := await body.read():
            last = body.done and body.complete and not body.trailers
            await self.send_data(stream_id, data, end_stream=last)
            if last:
                return
        self.end_body(stream_id, body)

    def end_body(self, stream_id: int, body: Body) -> None:
        """End a stream whose body has been sent: with its trailers, or an empty END_STREAM."""
        if body.trailers:
            self.conn.send_trailers(stream_id, h2_fields(body.trailers))
        else:
            self.conn.end_stream(stream_id)
        self.flush_soon()

    def ack(self, stream_id: int, n: int) -> None:
        """Return flow-control credit for *n* bytes the other side has taken."""
        if self.closed or not n:
            return
        try:
            self.conn.acknowledge_received_data(n, stream_id)
        except (NGH2Error, ValueError):  # ValueError: more than libnghttp2 holds unacknowledged
            return
        if not self.flush_scheduled:
            self.flush_soon()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drains, self.drain_waiters = self.drain_waiters, []
        for fut in drains:
            if not fut.done():
                fut.set_result(None)

    async def _drained(self) -> None:
        """Wait until the transport takes writes again (resume_writing), alongside any other stream."""
        fut = self.loop.create_future()
        self.drain_waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self.drain_waiters:  # this stream is gone: its slot must not outlive it
                self.drain_waiters.remove(fut)
            raise


class _ServerStream:
    __slots__ = ("id", "request", "body", "task", "upstream", "taken", "watched")

    def __init__(self, stream_id: int, request: Request, body: Body) -> None:
        self.id = stream_id
        self.request = request
        self.body = body
        self.task: asyncio.Task | None = None
        # The proxy has taken the stream on (its request is on its way upstream): a client's reset
        # from then on is a cancellation, not a rapid reset (h2limits, hyper's "pending accept").
        self.taken = False
        # Direct path: (upstream connection, its stream id) while the response is awaited.
        self.upstream: tuple[H2ClientConnection, int] | None = None
        self.watched: Watched | None = None  # the hook's watches of this request (meshctl_proxy.hooks)

    def cancel(self) -> None:
        """The client's stream is gone: stop serving it, and cancel the upstream stream too (RFC 9113 section 8.7)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.upstream is not None:
            conn, sid = self.upstream
            self.upstream = None
            conn.cancel(sid)


class H2ServerConnection(_Sender, asyncio.Protocol):
    """A client's HTTP/2 connection to the proxy."""

    def __init__(self, proxy, ctx: ConnectionContext, stats: TcpStats) -> None:
        super().__init__()
        self.proxy = proxy
        self.ctx = ctx
        self.stats = stats
        self.path = path = RequestPath(proxy, ctx, raw_errors=(UpstreamReset,))
        self.upstream = path.upstream
        self.conn = ngh2.Connection(Role.SERVER, _SERVER_CONFIG)
        self.streams: dict[int, _ServerStream] = {}
        self.guard = FloodGuard()
        self.draining = False
        self.goaway_sent = False
        self.last_sid = 0  # the highest stream id the client opened (GOAWAY's last_stream_id)
        self.bodiless: list[_ServerStream] = []  # requests of this read, started once its events are in
        self._authority = (b"", "")  # the last :authority and its str: clients repeat it on every stream
        marker = proxy.loop_markers[ctx.direction]
        self._markers = (marker,)
        self._via = (b"via", marker.entry("h2"))  # added to every request forwarded (wire.loop_marker)
        self._head_timer: asyncio.TimerHandle | None = None  # runs while a frame is arriving unfinished

    # -- transport callbacks ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.proxy.connections.add(self)
        log.debug("h2 client %s: connection accepted", self.ctx.client_addr)
        conn = self.conn
        conn.initiate_connection({
            ngh2.Setting.MAX_CONCURRENT_STREAMS: self.proxy.config.http2_max_concurrent_streams,
            ngh2.Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            ngh2.Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        conn.set_local_window_size(CONNECTION_WINDOW)
        self.flush()

    def feed_initial(self, data: bytes) -> None:
        if data:
            self.stats.read_bytes -= len(data)
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.stats.read_bytes += len(data)
        if self.closed:
            return
        conn = self.conn
        try:
            conn.receive_data(data)
        except ngh2.DenialOfServiceError as exc:
            self.calm(str(exc))
            return
        except NGH2Error as exc:
            self._protocol_error(exc)
            return
        on_event = self._on_event
        heard = False
        for ev in conn.events():
            heard = True
            t = type(ev)
            if t is RequestReceived:
                self._on_request(ev)
            elif t is not StreamClosed or cast(StreamClosed, ev).error_code:  # a stream that closed cleanly needs nothing
                on_event(ev)
                if self.closed:
                    return
        if self.bodiless:
            self._start_bodiless()
        self.flush()
        if self.closed:
            return
        # Streams libnghttp2 closed while writing (a reset it sent for a malformed DATA frame) report here.
        for ev in conn.events():
            heard = True
            if type(ev) is not StreamClosed or ev.error_code:
                on_event(ev)
                if self.closed:
                    return
        # Bytes that made no event are a frame (a header block above all) still arriving: the
        # header-read timeout runs until one completes (class 5; HTTP/1's is in http1_proxy).
        if heard:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.proxy.config.header_read_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.info("h2 client %s: a frame begun and not finished in time", self.ctx.client_addr)
        self._close_with(NO_ERROR, "request head not received in time")

    def _ended(self, data: bytes) -> None:
        """libnghttp2 is done with the connection: a drain completed, or it closed it on an error."""
        closed = next((ev for ev in self.conn.events() if type(ev) is ConnectionClosed), None)
        if closed is not None and closed.error_code == PROTOCOL_ERROR and b"concurrent streams" in closed.debug_data:
            log.warning("h2 client %s: more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS",
                        self.ctx.client_addr)
            self._close_with(ENHANCE_YOUR_CALM, "more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS",
                             data=data)
            return
        self.closed = True
        if data:
            self._write(data)
        self._abort_streams()
        if closed is not None and closed.error_code:
            log.info("h2 client %s: connection error %d: %s", self.ctx.client_addr, closed.error_code,
                     closed.debug_data.decode("latin-1"))
            self._linger()
        else:  # a drain that completed: every stream was answered
            self.transport.close()

    def _on_event(self, ev) -> None:
        t = type(ev)
        if t is RequestReceived:
            self._on_request(ev)
        elif t is StreamClosed:
            if ev.error_code:  # closed by libnghttp2 (a malformed frame) or after a reset: stop serving it
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    st.body.discard(StreamReset(ev.error_code, "stream closed"))
                    self._cancel(st, "stream closed")
                    self._maybe_close()
        elif t is DataReceived:
            st = self.streams.get(ev.stream_id)
            if st is None:  # a stream we refused or reset: its bytes still count against the connection
                self.ack(ev.stream_id, len(ev.data))
                return
            st.body.feed(ev.data)
            if ev.end_stream:
                st.body.finish()
        elif t is TrailersReceived:
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.body.finish(list(ev.headers))
        elif t is _StreamResetEvent:
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.body.discard(StreamReset(ev.error_code, "client reset the stream"))
                self._cancel(st, "client reset the stream")
                # Only a stream reset before the proxy took it on counts towards the rapid-reset limit
                # (CVE-2023-44487, as hyper's max_pending_accept_reset_streams): cancelling calls that
                # were answered or are under way is what gRPC clients do (issue 13, class 12).
                if not st.taken:
                    reason = self.guard.on_reset(self.loop.time())
                    if reason:
                        self.calm(reason)
        elif t is WindowUpdated:
            self.wake_windows(ev.stream_id)
        elif t is SettingsReceived:
            self.wake_windows(0)
            reason = self.guard.on_settings(self.loop.time())
            if reason:
                self.calm(reason)
        elif t is PingReceived:
            reason = self.guard.on_ping(self.loop.time())
            if reason:
                self.calm(reason)
        elif t is GoAwayReceived:
            self.draining = True  # the client said goodbye: finish what is open, then close
            self._maybe_close()

    def _on_request(self, ev) -> None:
        sid = ev.stream_id
        if sid > self.last_sid:
            self.last_sid = sid
        if self.draining:
            self.conn.reset_stream(sid, REFUSED_STREAM)
            return
        try:
            pseudo, headers = request_fields(ev.headers, self._markers)
        except MalformedHeaders as exc:
            self._refuse_malformed(sid, exc)
            return
        method = pseudo[b":method"]
        if method == b"CONNECT":  # not offered (no SETTINGS_ENABLE_CONNECT_PROTOCOL either)
            self.conn.reset_stream(sid, PROTOCOL_ERROR)
            return
        authority = pseudo.get(b":authority")
        if authority is None:  # libnghttp2 lets a request carry Host instead
            authority = next((v for k, v in headers if k == b"host"), b"")
        cached = self._authority
        if authority == cached[0]:
            host = cached[1]
        else:
            host = authority.decode("latin-1")
            self._authority = (authority, host)
        if ev.end_stream:
            body = EMPTY
        else:
            length = next((v for k, v in headers if k == b"content-length"), None)
            body = Body(int(length) if length and length.isdigit() else None,
                        on_consumed=partial(self.ack, sid), high_water=STREAM_WINDOW)
        headers.append(self._via)  # request_fields() made a list of its own
        request = Request(method, pseudo[b":path"], host, headers, body, pseudo[b":scheme"], "h2", self.ctx)
        st = self.streams[sid] = _ServerStream(sid, request, body)
        if body is EMPTY:
            # Started once this read's events are in, so that a stream the client resets in the same
            # read (rapid reset, CVE-2023-44487) never reaches the upstream, as with a task.
            self.bodiless.append(st)
            return
        st.task = self.loop.create_task(self._serve_stream(st))

    def _start_bodiless(self) -> None:
        starting, self.bodiless = self.bodiless, []
        for st in starting:
            if self.streams.get(st.id) is st and not self._try_direct(st):
                st.task = self.loop.create_task(self._serve_stream(st))

    # -- the direct path: no task, no future -------------------------------------------------
    def _try_direct(self, st: _ServerStream) -> bool:
        """Send a bodiless request upstream from this callback when the router's shortcut names the
        endpoint (meshctl_proxy.transport.exchange) and a pooled upstream connection has room; the
        response is written from that connection's callback.  Without room the general path sends it to
        the same endpoint: the router is never asked twice about one request.

        A task per stream, its chain of coroutines and a future per response were a tenth of the
        CPU per request.  False: the general path (_serve_stream) handles it from the start.
        """
        path = self.path
        request = st.request
        endpoint = path.take_shortcut(request)
        if endpoint is None:
            return False
        stats = path.counted(request.authority, endpoint)
        start = self.loop.time()
        if path.hooks.observers:
            try:
                st.watched = path.announce(request, endpoint, start)
            except ProxyError as exc:
                self._direct_answer(st, stats, exc.response(), None, 0.0, start)
                return True
        pool = self.upstream.h2
        conn = pool.usable(endpoint) if pool is not None else None
        usid = conn.start(request, partial(self._direct_done, st, endpoint, stats, start)) if conn is not None else None
        if usid is None:
            st.task = self.loop.create_task(self._serve_stream(st, stats=stats, start=start, endpoint=endpoint))
        else:
            st.upstream = (conn, usid)
        st.taken = True
        return True

    def _direct_done(self, st: _ServerStream, endpoint: Endpoint, stats, start: float, response: Response | None,
                     exc: Exception | None) -> None:
        st.upstream = None
        latency = self.loop.time() - start
        if isinstance(exc, UpstreamReset) and exc.code == REFUSED_STREAM:
            # Nothing was processed (RFC 9113 section 8.7): the general path sends it again, once.
            if not self.closed and st.id in self.streams:
                st.task = self.loop.create_task(self._serve_stream(st, stats=stats, start=start, endpoint=endpoint))
            return
        if self.path.observes:
            self.path.observe(endpoint, response, exc, latency)
        self._direct_answer(st, stats, response, exc, latency, start)

    def _direct_answer(self, st: _ServerStream, stats, response: Response | None, exc: Exception | None,
                       latency: float, start: float) -> None:
        sid = st.id
        if self.closed or sid not in self.streams:
            if response is not None:
                response.body.discard()  # nobody will relay it: its upstream credit goes back
            self._watch_end(st, None, "client went away")
            return
        if isinstance(exc, UpstreamReset):
            stats.response(502, "failure", latency * 1000)
            self._watch_end(st, None, exc.reason)
            self._reset(sid, exc.code)
            self._end(sid)
            return
        if exc is not None:
            response = exc.response() if isinstance(exc, ProxyError) else ProxyError(
                502, f"proxy error: {type(exc).__name__}").response()
        if st.watched is not None:
            st.watched.response(response.status, self.loop.time())
        try:
            answered = self._respond_now(st, response)
        except NGH2Error:
            response.body.discard()
            self._watch_end(st, response, "stream closed")
            self._end(sid)
            return
        if answered:
            stats.record(response, latency * 1000)
            if st.watched is not None:
                self._watch_end(st, response)
            del self.streams[sid]
            if self.draining:
                self._maybe_close()
        else:  # a body still to come, or beyond the peer's window: relay it in a task
            st.task = self.loop.create_task(self._serve_stream(st, stats=stats, start=start, response=response,
                                                               latency_ms=latency * 1000))

    def _cancel(self, st: _ServerStream, reason: str) -> None:
        st.cancel()
        self._watch_end(st, None, reason)

    def _watch_end(self, st: _ServerStream, response: Response | None, error: str | None = None) -> None:
        """The request on *st* is over (answered, failed or abandoned): its watches end, once."""
        watched = st.watched
        if watched is None:
            return
        st.watched = None
        end_watch(watched, self.loop.time(), response, error)

    def _end(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._maybe_close()

    def _refuse_malformed(self, sid: int, exc: MalformedHeaders) -> None:
        if isinstance(exc, LoopDetected):  # well-formed, but this side forwarded it before: answer 508
            log.warning("h2 client %s: stream %d: %s", self.ctx.client_addr, sid, exc)
            response = ProxyError(LOOP_STATUS, str(exc)).response()
            headers = [(b":status", b"%d" % LOOP_STATUS), *h2_fields(response.headers)]
            self.conn.send_response(sid, headers, end_stream=False)
            self.conn.send_data(sid, response.body.read_nowait(), end_stream=True)
            self.flush()
            try:
                if not self.conn.queued_body_size(sid):
                    self.conn.reset_stream(sid, NO_ERROR)  # the request's own body, if any, is not wanted
            except NGH2Error:
                pass
            return
        # RFC 9113 section 8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
        log.info("h2 client %s: stream %d: malformed header block: %s", self.ctx.client_addr, sid, exc)
        self.conn.reset_stream(sid, PROTOCOL_ERROR)

    def calm(self, reason: str) -> None:
        """GOAWAY(ENHANCE_YOUR_CALM) and close: the client is abusing the connection."""
        log.warning("h2 client %s: %s", self.ctx.client_addr, reason)
        self._close_with(ENHANCE_YOUR_CALM, reason)

    def _protocol_error(self, exc: Exception) -> None:
        log.info("h2 client %s: protocol error: %s", self.ctx.client_addr, exc)
        self._close_with(PROTOCOL_ERROR, str(exc))

    def _close_with(self, code: int, reason: str, *, data: bytes | None = None) -> None:
        """GOAWAY naming *reason*, written by hand: the connection ends here whatever libnghttp2's state."""
        if self.closed:
            return
        if data is None:
            try:
                data = self.conn.data_to_send()
            except NGH2Error:  # libnghttp2 gave up on the session (a flood it caught): nothing of its own to send
                data = b""
        # What libnghttp2 queued (PING ACKs, resets) goes first; a GOAWAY of its own (it may have decided to
        # end the connection already) gives way to the one naming our reason.
        out = without_goaway(data) + goaway_frame(self.last_sid, code, reason.encode()[:200])
        self._write(out)
        self.closed = True  # read nothing more from this client
        self._abort_streams()
        self._linger()

    def _linger(self) -> None:
        # Half-close and linger briefly: closing with unread input would send a TCP RST,
        # which can destroy the GOAWAY before the client reads it.
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(1.0, transport.close)
        else:
            transport.close()

    def _abort_streams(self) -> None:
        for st in list(self.streams.values()):
            st.body.abort(StreamReset(CANCEL, "connection closed"))
            self._cancel(st, "connection closed")
        self.streams.clear()
        self.bodiless.clear()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.stats.closed += 1
        self.proxy.connections.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
        self.fail_waiters(ConnectionResetError("client connection lost"))
        self._abort_streams()

    def eof_received(self) -> bool:
        return False

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY naming the last stream we accept, serve those, then close."""
        if self.closed:
            return
        self.draining = True
        if not self.goaway_sent:
            self.goaway_sent = True
            self.conn.send_goaway(NO_ERROR, last_stream_id=self.last_sid)
            self.flush()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.draining and not self.streams and not self.closed:
            self.flush()
            if not self.closed:
                self.closed = True
                self.transport.close()


    # -- one stream -------------------------------------------------------------------------
    def _respond_now(self, st: _ServerStream, response: Response) -> bool:
        """Write the response head, and the body too when it is all here and fits the peer's windows.

        True: the stream is answered.  False: the body still has to be relayed (send_body).
        """
        sid = st.id
        body = response.body
        conn = self.conn
        status = response.status
        headers = h2_fields(response.headers)
        headers.insert(0, (b":status", _STATUS.get(status) or b"%d" % status))
        empty = body is EMPTY or (body.done and not body.trailers and body.complete and body.length == 0)
        conn.send_response(sid, headers, end_stream=empty)
        if not self.flush_scheduled:
            self.flush_soon()
        if empty:
            return True
        # A small body that is all here goes to libnghttp2 whatever the windows: it sends only within them
        # and holds the rest, at most SMALL_BODY per stream, which spares three window look-ups per request.
        if (not body.complete or self.write_paused
                or (body.buffered > SMALL_BODY and body.buffered > self.window(sid))):
            return False
        data = body.read_nowait()
        if data:
            conn.send_data(sid, data, end_stream=not body.trailers)
            self.pending += len(data)
            if body.trailers:
                self.end_body(sid, body)
        else:
            self.end_body(sid, body)
        return True

    async def _serve_stream(self, st: _ServerStream, *, stats=None, start: float = 0.0, endpoint: Endpoint | None = None,
                            response: Response | None = None, latency_ms: float = 0.0) -> None:
        """The general path: the exchange (meshctl_proxy.transport.exchange), then relay the response.

        The direct path hands over here with *stats* already counted and the *endpoint* its shortcut
        chose (no stream room, or a refused stream to send again), or with the *response* whose body
        is still to be relayed.
        """
        request = st.request
        path = self.path
        st.taken = True
        if stats is None:
            start = self.loop.time()
            # Outbound requests count in their endpoint's hop series, known once the exchange answers.
            if not path.outbound:
                stats = path.counted(request.authority)
        sid = st.id
        status = response.status if response is not None else 0
        completed = False
        error = None
        try:
            if response is None:
                exchange = Exchange(path, request, start, watched=st.watched, announced=endpoint is not None)
                try:
                    response = await exchange.run(endpoint)
                except UpstreamReset as exc:
                    st.watched = exchange.watched
                    error = exc.reason
                    (stats or path.counted(request.authority)).response(502, "failure",
                                                                        (self.loop.time() - start) * 1000)
                    self._reset(sid, exc.code)
                    return
                except BodyError:
                    st.watched = exchange.watched
                    error = "client reset the stream"
                    return
                finally:
                    st.watched = exchange.watched
                latency_ms = (self.loop.time() - start) * 1000
                status = response.status
                if stats is None:
                    stats = path.counted(request.authority, response.endpoint)
                if self.closed or sid not in self.streams:
                    error = "client went away"
                    return
                if st.watched is not None:
                    st.watched.response(status, self.loop.time())
                if self._respond_now(st, response):
                    stats.record(response, latency_ms)
                    completed = True
                    return
            await self.send_body(sid, response.body)
            stats.record(response, latency_ms)
            completed = True
        except StreamReset as exc:  # the upstream reset mid-response: pass the code on
            error = "upstream reset the stream"
            (stats or path.counted(request.authority)).response(status or 502, "failure",
                                                                (self.loop.time() - start) * 1000)
            self._reset(sid, exc.code)
        except BodyError:
            error = "upstream failed mid-body"
            (stats or path.counted(request.authority)).response(status or 502, "failure",
                                                                (self.loop.time() - start) * 1000)
            self._reset(sid, INTERNAL_ERROR)
        except (asyncio.CancelledError, ConnectionError, NGH2Error):
            error = "stream abandoned"
        finally:
            self.streams.pop(sid, None)
            self._release(st, response, completed)
            self._watch_end(st, response, None if completed else error or "stream abandoned")
            self._maybe_close()

    def _release(self, st: _ServerStream, response: Response | None, completed: bool) -> None:
        """The exchange on *st* is over: whatever of its bodies nobody will read gives its credit back.

        A complete response to a request still being sent ends the request too: RST_STREAM(NO_ERROR),
        as RFC 9113 section 8.1 lets a server ask, so the client stops sending what nobody reads.
        """
        if response is not None and not completed:
            response.body.discard()  # its upstream's credit (the stream is abandoned mid-response)
        body = st.body
        if not body.done:
            if completed and not body.complete and not self.closed:
                # libnghttp2 sends RST_STREAM ahead of queued DATA: only once the response is all out.
                self.flush()
                try:
                    sent = not self.conn.queued_body_size(st.id)
                except NGH2Error:
                    sent = False
                if sent:
                    self._reset(st.id, NO_ERROR)
            body.discard()

    def _reset(self, sid: int, code: int) -> None:
        if self.closed:
            return
        try:
            self.conn.reset_stream(sid, code)
            self.flush()
        except NGH2Error:
            pass


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


class H2ClientConnection(_Sender, asyncio.Protocol):
    """One upstream HTTP/2 connection, shared by every request to its endpoint."""

    def __init__(self, pool: "H2Pool", endpoint: Endpoint, stats: TcpStats) -> None:
        super().__init__()
        self.pool = pool
        self.endpoint = endpoint
        self.stats = stats
        self.conn = ngh2.Connection(Role.CLIENT, _CLIENT_CONFIG)
        self.streams: dict[int, _ClientStream] = {}
        self.goaway = False
        self.max_streams = 100  # the server's SETTINGS_MAX_CONCURRENT_STREAMS, as libnghttp2 assumes until it comes
        self.last_used = 0.0  # loop time the pool last handed it out (its idle timeout counts from there)
        self.answered: list[_ClientStream] = []
        # Request bodies being sent, by stream: a stream can outlive its entry in self.streams (the
        # response is complete, the request is not) and its sender must stop when the stream closes.
        self.body_tasks: dict[int, asyncio.Task] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.stats.opened += 1
        log.debug("h2 upstream %s: connected", self.endpoint.addr)
        conn = self.conn
        conn.initiate_connection({
            ngh2.Setting.ENABLE_PUSH: 0,
            ngh2.Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            ngh2.Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        conn.set_local_window_size(CONNECTION_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.stats.read_bytes += len(data)
        if self.closed:
            return
        conn = self.conn
        try:
            conn.receive_data(data)
        except NGH2Error as exc:
            log.info("h2 upstream %s: protocol error: %s", self.endpoint.addr, exc)
            self.closed = self.goaway = True  # libnghttp2 will not be asked anything more
            self.pool.forget(self)
            self._lost(UpstreamReset(PROTOCOL_ERROR))
            self.transport.abort()
            return
        self._dispatch(conn.events())
        self.flush()
        # Streams libnghttp2 reset while writing (a malformed response: it sends the RST_STREAM) report here.
        events = conn.events()
        if events and not self.closed:
            self._dispatch(events)
            self.flush()
        if self.goaway and not self.streams and not self.closed:
            self.closed = True
            self.transport.close()

    def _dispatch(self, events) -> None:
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
                # with REFUSED_STREAM: the pool sends those again on a new connection.
                self.goaway = True
                self.pool.forget(self)
        if self.answered:
            answered, self.answered = self.answered, []
            for st in answered:
                st.settle(st.response)

    def _ended(self, data: bytes) -> None:
        if data:
            self._write(data)
        if not self.goaway:
            # libnghttp2 ended the connection (a protocol error by the server): nothing more comes.
            self.goaway = True
            self.pool.forget(self)
            self._lost(UpstreamReset(PROTOCOL_ERROR))
            self.closed = True
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

    def _lost(self, exc: ProxyError) -> None:
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

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.stats.closed += 1
        self.pool.forget(self)
        self.fail_waiters(ConnectionResetError("upstream connection lost"))
        self._lost(ProxyError(502, "upstream connection lost"))

    def eof_received(self) -> bool:
        return False

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
        if self.closed:
            return
        try:
            self.conn.reset_stream(sid, CANCEL)
            self.flush()
        except NGH2Error:
            pass

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
        if not self.closed:
            try:
                self.conn.reset_stream(sid, code)
                self.flush()
            except NGH2Error:
                pass


class H2Pool(EndpointPool):
    """One multiplexed upstream connection per endpoint (more when one is full or going away)."""

    def __init__(self, connector, metrics, direction: str, *, connect_timeout: float, **idle) -> None:
        super().__init__(connector, metrics, direction, connect_timeout=connect_timeout, **idle)
        self._connecting: dict[Endpoint, asyncio.Future] = {}

    def usable(self, endpoint: Endpoint) -> H2ClientConnection | None:
        """A connection to *endpoint* with room for one more stream, if one is open."""
        for conn in self.conns.get(endpoint, ()):
            if not conn.closed and not conn.goaway and len(conn.streams) < conn.max_streams:
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

    async def send(self, request: Request, endpoint: Endpoint) -> Response:
        for attempt in range(2):
            conn = self.usable(endpoint)
            if conn is None:
                conn = await self._connect(endpoint, request.authority)
            try:
                return await conn.send(request)
            except UpstreamReset as exc:
                # REFUSED_STREAM means the server did no work (RFC 9113 section 8.7): safe to retry
                # once when the body can be sent again.
                if exc.code != REFUSED_STREAM or request.body is not EMPTY or attempt:
                    raise
        raise AssertionError("unreachable")
