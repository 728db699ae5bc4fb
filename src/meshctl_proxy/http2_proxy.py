"""HTTP/2 with prior knowledge: the client-facing server connection and the pooled upstream client.

The h2 library is the sans-IO protocol machine; this module relays streams
between two of them.  An HTTP/2 request goes upstream as HTTP/2 (gRPC needs
trailers end to end), multiplexed over one connection per endpoint.

Flow control holds end to end: DATA from one side is acknowledged
(WINDOW_UPDATE) only when the other side has taken it
(``Body(on_consumed=...)``), and we send only within the peer's window,
waiting for its WINDOW_UPDATE otherwise (RFC 9113 section 5.2).

Resets travel both ways with their error code (a client's RST_STREAM cancels
the upstream stream; an upstream reset resets the client's stream).  A GOAWAY
from upstream refuses the streams it did not process (REFUSED_STREAM, which
clients may retry); a graceful drain sends GOAWAY with the last stream id and
serves the streams already open.
"""

from __future__ import annotations

import asyncio
import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack
from hyperframe.frame import GoAwayFrame

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.h2headers import (MalformedHeaders, check_request, check_response, check_trailers, h2_fields,
                                     regular_fields)
from meshctl_proxy.h2limits import FloodGuard
from meshctl_proxy.metrics import TcpStats
from meshctl_proxy.model import OUTBOUND, ConnectionContext, Endpoint, Outcome, ProxyError, Request, Response
from meshctl_proxy.routing import DirectRouter, EndpointPool, http_series

log = logging.getLogger("meshctl_proxy.http2")
# hpack logs every field it encodes or decodes, values included (so credentials), at DEBUG through
# its module logger: ~50 calls per proxied request, ~4% of the proxy's CPU even when nothing is
# written, and at the proxy's "debug" level bearer tokens in the log.  h2's own logger is already
# its no-op DummyLogger; hpack gets one too.
hpack.hpack.log = h2.config.DummyLogger()

MAX_HEADER_LIST_SIZE = 64 * 1024  # as the HTTP/1 head limit
# Receive windows: what one stream, and the whole connection, may have in flight
# towards us (the RFC's 64 KiB default caps a stream at 64 KiB per round trip).
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1 << 20


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


class GoawayFilter:
    """Takes GOAWAY frames out of the byte stream before h2 sees them.

    h2 closes its whole state machine on receiving GOAWAY, after which frames
    for streams still in flight are protocol errors.  RFC 9113 section 6.8 says
    those streams (ids up to last_stream_id) continue; so the proxy handles
    GOAWAY itself and h2 never sees it.  Everything else passes through.
    """

    __slots__ = ("buf", "skip", "passing")

    def __init__(self, *, skip: int = 0) -> None:
        self.buf = b""  # an incomplete frame header, or an incomplete GOAWAY frame
        self.skip = skip  # the client preface, which is not a frame
        self.passing = 0  # bytes of the current (non-GOAWAY) frame still to pass through

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        buf = self.buf + data if self.buf else data
        self.buf = b""
        out: list[bytes] = []
        goaways: list[tuple[int, int]] = []
        pos, n = 0, len(buf)
        if self.skip:
            pos = min(self.skip, n)
            out.append(buf[:pos])
            self.skip -= pos
        if self.passing and pos < n:
            k = min(self.passing, n - pos)
            out.append(buf[pos:pos + k])
            self.passing -= k
            pos += k
        while pos < n:
            if n - pos < 9:
                self.buf = buf[pos:]
                break
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if buf[pos + 3] == 0x07:  # GOAWAY
                if end > n:
                    self.buf = buf[pos:]
                    break
                if length >= 8:
                    last = int.from_bytes(buf[pos + 9:pos + 13], "big") & 0x7FFFFFFF
                    goaways.append((last, int.from_bytes(buf[pos + 13:pos + 17], "big")))
                pos = end
            elif end <= n:
                out.append(buf[pos:end])
                pos = end
            else:
                out.append(buf[pos:])
                self.passing = end - n
                pos = n
        return (out[0] if len(out) == 1 else b"".join(out)), goaways


def _config(client_side: bool) -> h2.config.H2Configuration:
    # h2's header validation and normalisation, both ways, are done by meshctl_proxy.h2headers in one
    # pass per block instead (h2's cost a fifth of the CPU per request): check_* on every block
    # received, h2_fields on every block sent.  Cookies stay split (RFC 9113 section 8.2.3 allows it
    # between HTTP/2 hops; the HTTP/1 side never sees these blocks).
    return h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                     validate_inbound_headers=False, normalize_inbound_headers=False,
                                     validate_outbound_headers=False, normalize_outbound_headers=False)


class _Sender:
    """Writes DATA within the peer's flow-control windows; shared by both ends."""

    def __init__(self) -> None:
        self.conn: h2.connection.H2Connection = None
        self.transport = None
        self.window_waiters: dict[int, asyncio.Future] = {}
        self.write_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.stats: TcpStats | None = None
        self.closed = False
        self.flush_scheduled = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.stats.write_bytes += len(data)
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Write what h2 has queued at the end of this loop pass: streams answered together
        share one write (a syscall per frame was the largest cost per request)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self.flush()

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
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(exc)

    async def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send *data* within the peer's windows; END_STREAM goes on its last frame."""
        conn = self.conn
        view = memoryview(data)
        while view:
            if self.closed:
                raise ConnectionResetError("connection closed")
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                fut = self.window_waiters[stream_id] = asyncio.get_running_loop().create_future()
                await fut
                continue
            n = min(window, conn.max_outbound_frame_size, len(view))
            conn.send_data(stream_id, data if n == len(data) else bytes(view[:n]),
                           end_stream=end_stream and n == len(view))
            view = view[n:]
            self.flush_soon()
            if self.write_paused:
                self.drain_waiter = asyncio.get_running_loop().create_future()
                await self.drain_waiter

    async def send_body(self, stream_id: int, body: Body) -> None:
        """Relay *body* and end the stream: END_STREAM rides on the last DATA frame when no
        trailers follow (one frame and one h2 call fewer than an empty DATA frame after it)."""
        while data := await body.read():
            last = body.done and body.complete and not body.trailers
            await self.send_data(stream_id, data, end_stream=last)
            if last:
                return
        self.end_body(stream_id, body)

    def end_body(self, stream_id: int, body: Body) -> None:
        """End a stream whose body has been sent: with its trailers, or an empty END_STREAM."""
        if body.trailers:
            self.conn.send_headers(stream_id, h2_fields(body.trailers), end_stream=True)
        else:
            self.conn.end_stream(stream_id)
        self.flush_soon()

    def ack(self, stream_id: int, n: int) -> None:
        """Return flow-control credit for *n* bytes the other side has taken."""
        if self.closed or not n:
            return
        try:
            self.conn.acknowledge_received_data(n, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return
        self.flush_soon()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)


class _ServerStream:
    __slots__ = ("id", "request", "body", "task", "responded", "upstream")

    def __init__(self, stream_id: int, request: Request, body: Body) -> None:
        self.id = stream_id
        self.request = request
        self.body = body
        self.task: asyncio.Task | None = None
        self.responded = False
        # Direct path: (upstream connection, its stream id) while the response is awaited.
        self.upstream: tuple[H2ClientConnection, int] | None = None

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
        self.router = proxy.routers[ctx.direction]
        self.upstream = proxy.upstreams[ctx.direction]
        self.conn = h2.connection.H2Connection(_config(client_side=False))
        self.streams: dict[int, _ServerStream] = {}
        self.guard = FloodGuard()
        self.goaway_filter = GoawayFilter(skip=24)  # the preface
        self.draining = False
        self.goaway_sent = False
        self.loop = asyncio.get_running_loop()
        self.bodiless: list[_ServerStream] = []  # requests of this read, started once its events are in

    # -- transport callbacks ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.proxy.connections.add(self)
        conn = self.conn
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.proxy.config.http2_max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def feed_initial(self, data: bytes) -> None:
        if data:
            self.stats.read_bytes -= len(data)
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.stats.read_bytes += len(data)
        if self.closed:
            return
        data, goaways = self.goaway_filter.feed(data)
        try:
            events = self.conn.receive_data(data) if data else []
        except h2.exceptions.TooManyStreamsError:
            self.calm("more concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS", h2_failed=True)
            return
        except h2.exceptions.DenialOfServiceError as exc:
            self.calm(str(exc), h2_failed=True)
            return
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc)
            return
        for ev in events:
            self._on_event(ev)
            if self.closed:
                return
        if self.bodiless:
            self._start_bodiless()
        if goaways:
            self.draining = True  # the client is going away: finish what is open, then close
            self._maybe_close()
        self.flush()

    def _on_event(self, ev) -> None:
        t = type(ev)
        if t is h2.events.DataReceived:
            st = self.streams.get(ev.stream_id)
            if st is None:  # a stream we refused or reset: its bytes still count against the connection
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                return
            padding = ev.flow_controlled_length - len(ev.data)
            if padding:
                self.conn.acknowledge_received_data(padding, ev.stream_id)
            st.body.feed(ev.data)
        elif t is h2.events.RequestReceived:
            self._on_request(ev)
        elif t is h2.events.StreamEnded:
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.body.finish()
        elif t is h2.events.TrailersReceived:
            st = self.streams.get(ev.stream_id)
            if st is not None:
                try:
                    check_trailers(ev.headers)
                except MalformedHeaders as exc:
                    self._refuse_malformed(ev.stream_id, exc)
                    st.body.abort(StreamReset(h2.errors.ErrorCodes.PROTOCOL_ERROR, f"malformed trailers: {exc}"))
                    return
                st.body.finish(ev.headers)
        elif t is h2.events.StreamReset:
            reason = self.guard.on_reset(self.loop.time())
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                st.body.abort(StreamReset(ev.error_code, "client reset the stream"))
                st.cancel()
            if reason:
                self.calm(reason)
        elif t is h2.events.WindowUpdated:
            self.wake_windows(ev.stream_id)
        elif t is h2.events.RemoteSettingsChanged:
            self.wake_windows(0)
            reason = self.guard.on_settings(self.loop.time())
            if reason:
                self.calm(reason)
        elif t is h2.events.PingReceived:
            reason = self.guard.on_ping(self.loop.time())
            if reason:
                self.calm(reason)
        elif t is h2.events.ConnectionTerminated:
            self.draining = True  # the client said goodbye: finish what is open, then close
            self._maybe_close()

    def _on_request(self, ev) -> None:
        sid = ev.stream_id
        if self.draining:
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        try:
            pseudo = check_request(ev.headers)
        except MalformedHeaders as exc:
            self._refuse_malformed(sid, exc)
            return
        method = pseudo[b":method"]
        if method == b"CONNECT":
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        headers = regular_fields(ev.headers)
        authority = pseudo.get(b":authority")
        if authority is None:
            authority = next((v for k, v in headers if k == b"host"), b"")
        if ev.stream_ended:
            body = EMPTY
        else:
            length = next((v for k, v in headers if k == b"content-length"), None)
            body = Body(int(length) if length and length.isdigit() else None,
                        on_consumed=lambda n, sid=sid: self.ack(sid, n), high_water=STREAM_WINDOW)
        request = Request(method, pseudo.get(b":path", b"/"), authority.decode("latin-1"), headers, body,
                          scheme=pseudo.get(b":scheme", b"http"), protocol="h2", context=self.ctx)
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
        """Send a bodiless request upstream from this callback when the router asks nothing of it but
        select() and observe() (routing.DirectRouter.direct, as the HTTP/1 fast path) and a pooled
        upstream connection has room; the response is written from that connection's callback.

        A task per stream, its chain of coroutines and a future per response were a tenth of the
        CPU per request.  False: take the general path (_serve_stream), which handles the rest.
        """
        router = self.router
        direct = getattr(type(router), "direct", None)
        pool = getattr(self.upstream, "h2", None)
        request = st.request
        if direct is None or pool is None or not direct(router, request):
            return False
        try:
            endpoint = router.select(router.target(request))
        except ProxyError:
            return False  # the general path answers it
        conn = pool.usable(endpoint)
        if conn is None:
            return False
        stats = self._counted(request, endpoint)
        start = self.loop.time()
        usid = conn.start(request, lambda response, exc: self._direct_done(st, endpoint, stats, start, response, exc))
        if usid is None:
            stats.requests -= 1
            return False
        st.upstream = (conn, usid)
        return True

    def _direct_done(self, st: _ServerStream, endpoint: Endpoint, stats, start: float, response: Response | None,
                     exc: Exception | None) -> None:
        st.upstream = None
        sid = st.id
        latency = self.loop.time() - start
        if isinstance(exc, UpstreamReset) and exc.code == h2.errors.ErrorCodes.REFUSED_STREAM:
            # Nothing was processed (RFC 9113 section 8.7): the general path sends it again, once.
            if not self.closed and sid in self.streams:
                st.task = self.loop.create_task(self._serve_stream(st, stats=stats, start=start))
            return
        if exc is not None:
            self.router.observe(endpoint, Outcome(None, latency, getattr(exc, "reason", str(exc))))
        else:
            self.router.observe(endpoint, Outcome(response.status, latency))
        if self.closed or sid not in self.streams:
            return
        if isinstance(exc, UpstreamReset):
            stats.response(502, "failure", latency * 1000)
            self._reset(sid, exc.code)
            self._end(sid)
            return
        if exc is not None:
            response = exc.response() if isinstance(exc, ProxyError) else ProxyError(
                502, f"proxy error: {type(exc).__name__}").response()
        try:
            answered = self._respond_now(st, response)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._end(sid)
            return
        if answered:
            stats.record(response, latency * 1000)
            self._end(sid)
        else:  # a body still to come, or beyond the peer's window: relay it in a task
            st.task = self.loop.create_task(self._serve_stream(st, stats=stats, start=start, response=response,
                                                               latency_ms=latency * 1000))

    def _end(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._maybe_close()

    def _refuse_malformed(self, sid: int, exc: MalformedHeaders) -> None:
        # RFC 9113 section 8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR.
        log.info("h2 client %s: stream %d: malformed header block: %s", self.ctx.client_addr, sid, exc)
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)

    def calm(self, reason: str, *, h2_failed: bool = False) -> None:
        """GOAWAY(ENHANCE_YOUR_CALM) and close: the client is abusing the connection."""
        log.warning("h2 client %s: %s", self.ctx.client_addr, reason)
        self._close_with(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, reason, h2_failed=h2_failed)

    def _protocol_error(self, exc: Exception) -> None:
        log.info("h2 client %s: protocol error: %s", self.ctx.client_addr, exc)
        self._close_with(h2.errors.ErrorCodes.PROTOCOL_ERROR, str(exc), h2_failed=True)

    def _close_with(self, code, reason: str, *, h2_failed: bool) -> None:
        if h2_failed:
            # h2 closed its state machine on the error and queued its own GOAWAY
            # (PROTOCOL_ERROR): replace that with the frame that names our reason.
            self.conn.clear_outbound_data_buffer()
            frame = GoAwayFrame(0, last_stream_id=self.conn.highest_inbound_stream_id, error_code=code,
                                additional_data=reason.encode()[:200])
            self.stats.write_bytes += len(frame.serialize())
            self.transport.write(frame.serialize())
        else:
            self.conn.close_connection(error_code=code, additional_data=reason.encode()[:200])
            self.flush()
        self.closed = True  # read nothing more from this client
        self._abort_streams()
        # Half-close and linger briefly: closing with unread input would send a TCP RST,
        # which can destroy the GOAWAY before the client reads it.
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(1.0, transport.close)
        else:
            transport.close()

    def _abort_streams(self) -> None:
        for st in list(self.streams.values()):
            st.body.abort(StreamReset(h2.errors.ErrorCodes.CANCEL, "connection closed"))
            st.cancel()
        self.streams.clear()
        self.bodiless.clear()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.stats.closed += 1
        self.proxy.connections.discard(self)
        self.fail_waiters(ConnectionResetError("client connection lost"))
        self._abort_streams()

    def eof_received(self) -> bool:
        return False

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY naming the last stream we accept, serve those, then close.

        h2's close_connection() would stop the state machine at once, so the
        GOAWAY frame is written by hand and the connection keeps serving.
        """
        if self.closed:
            return
        self.draining = True
        if not self.goaway_sent:
            self.goaway_sent = True
            last = max(self.streams, default=self.conn.highest_inbound_stream_id)
            self.flush()
            frame = GoAwayFrame(0, last_stream_id=last, error_code=0)
            self.transport.write(frame.serialize())
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.draining and not self.streams and not self.closed:
            self.flush()
            self.transport.close()

    # -- one stream -------------------------------------------------------------------------
    def _stats(self, request: Request, endpoint: Endpoint | None = None):
        """The series *request* counts in (routing.http_series): outbound, the hop to *endpoint*."""
        return http_series(self.proxy.metrics, self.ctx, request.authority, self.upstream.connector, endpoint)

    def _counted(self, request: Request, endpoint: Endpoint | None = None):
        stats = self._stats(request, endpoint)
        stats.requests += 1
        return stats

    def _respond_now(self, st: _ServerStream, response: Response) -> bool:
        """Write the response head, and the body too when it is all here and fits the peer's windows.

        True: the stream is answered.  False: the body still has to be relayed (send_body).
        """
        sid = st.id
        body = response.body
        conn = self.conn
        headers = [(b":status", b"%d" % response.status), *h2_fields(response.headers)]
        empty = body is EMPTY or (body.done and not body.trailers and body.complete and body.length == 0)
        conn.send_headers(sid, headers, end_stream=empty)
        st.responded = True
        self.flush_soon()
        if empty:
            return True
        if (not body.complete or self.write_paused
                or body.buffered > min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)):
            return False
        data = body.read_nowait()
        if data:
            conn.send_data(sid, data, end_stream=not body.trailers)
            if body.trailers:
                self.end_body(sid, body)
        else:
            self.end_body(sid, body)
        return True

    async def _serve_stream(self, st: _ServerStream, *, stats=None, start: float = 0.0,
                            response: Response | None = None, latency_ms: float = 0.0) -> None:
        """The general path: dispatch through the router, then relay the response.

        The direct path hands over here with *stats* already counted (a refused stream to send
        again), or with the *response* whose body is still to be relayed.
        """
        request = st.request
        if stats is None:
            start = self.loop.time()
            # Outbound requests count in their endpoint's hop series, known once dispatch() answers.
            if self.ctx.direction != OUTBOUND:
                stats = self._counted(request)
        sid = st.id
        status = response.status if response is not None else 0
        try:
            if response is None:
                try:
                    router = self.router
                    direct = getattr(type(router), "direct", None)
                    if direct is not None and direct(router, request):
                        # Nothing but select() + send + observe(), as DirectRouter.dispatch does:
                        # skip the policy router's per-request machinery (see routing.DirectRouter.direct).
                        response = await DirectRouter.dispatch(router, request, self.upstream)
                    else:
                        response = await router.dispatch(request, self.upstream)
                except UpstreamReset as exc:
                    (stats or self._counted(request)).response(502, "failure", (self.loop.time() - start) * 1000)
                    self._reset(sid, exc.code)
                    return
                except ProxyError as exc:
                    response = exc.response()
                except BodyError:
                    return  # the client reset its own stream
                except Exception as exc:
                    log.exception("dispatch failed")
                    response = ProxyError(502, f"proxy error: {type(exc).__name__}").response()
                latency_ms = (self.loop.time() - start) * 1000
                status = response.status
                if stats is None:
                    stats = self._counted(request, response.endpoint)
                if self.closed or sid not in self.streams:
                    return
                if self._respond_now(st, response):
                    stats.record(response, latency_ms)
                    return
            await self.send_body(sid, response.body)
            stats.record(response, latency_ms)
        except StreamReset as exc:  # the upstream reset mid-response: pass the code on
            (stats or self._counted(request)).response(status or 502, "failure", (self.loop.time() - start) * 1000)
            self._reset(sid, exc.code)
        except BodyError:
            (stats or self._counted(request)).response(status or 502, "failure", (self.loop.time() - start) * 1000)
            self._reset(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        except (asyncio.CancelledError, ConnectionError):
            pass
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.streams.pop(sid, None)
            self._maybe_close()

    def _reset(self, sid: int, code: int) -> None:
        if self.closed:
            return
        try:
            self.conn.reset_stream(sid, code)
            self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass


class _ClientStream:
    __slots__ = ("id", "request", "waiter", "on_response", "body", "body_task", "response")

    def __init__(self, stream_id: int, request: Request, waiter: asyncio.Future | None, on_response=None) -> None:
        self.id = stream_id
        self.request = request
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
        self.conn = h2.connection.H2Connection(_config(client_side=True))
        self.streams: dict[int, _ClientStream] = {}
        self.goaway_filter = GoawayFilter()
        self.goaway = False
        self.answered: list[_ClientStream] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.stats.opened += 1
        conn = self.conn
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    @property
    def usable(self) -> bool:
        return (not self.closed and not self.goaway
                and len(self.streams) < self.conn.remote_settings.max_concurrent_streams)

    def data_received(self, data: bytes) -> None:
        self.stats.read_bytes += len(data)
        data, goaways = self.goaway_filter.feed(data)
        try:
            events = self.conn.receive_data(data) if data else []
        except h2.exceptions.ProtocolError as exc:
            log.info("h2 upstream %s: protocol error: %s", self.endpoint.addr, exc)
            self.goaway = True
            self._fail_all(UpstreamReset(h2.errors.ErrorCodes.PROTOCOL_ERROR))
            self.transport.abort()
            return
        for ev in events:
            t = type(ev)
            if t is h2.events.DataReceived:
                st = self.streams.get(ev.stream_id)
                if st is None or st.body is None:  # cancelled or refused: the connection's credit comes back
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                padding = ev.flow_controlled_length - len(ev.data)
                if padding:
                    self.conn.acknowledge_received_data(padding, ev.stream_id)
                st.body.feed(ev.data)
            elif t is h2.events.ResponseReceived:
                self._on_response(ev)
            elif t is h2.events.StreamEnded:
                st = self.streams.pop(ev.stream_id, None)
                if st is not None and st.body is not None:
                    st.body.finish()
            elif t is h2.events.TrailersReceived:
                st = self.streams.pop(ev.stream_id, None)
                if st is not None and st.body is not None:
                    try:
                        check_trailers(ev.headers)
                    except MalformedHeaders as exc:
                        self._malformed(ev.stream_id, exc)
                        st.body.abort(StreamReset(h2.errors.ErrorCodes.PROTOCOL_ERROR,
                                                  f"upstream sent malformed trailers: {exc}"))
                        continue
                    st.body.finish(ev.headers)
            elif t is h2.events.StreamReset:
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    self._fail_stream(st, ev.error_code)
            elif t is h2.events.WindowUpdated:
                self.wake_windows(ev.stream_id)
            elif t is h2.events.RemoteSettingsChanged:
                self.wake_windows(0)
        if self.answered:
            answered, self.answered = self.answered, []
            for st in answered:
                st.settle(st.response)
        for last_stream_id, _code in goaways:
            self.goaway = True
            self.pool.forget(self)
            # Streams the server never processed are refused: the client may retry them.
            for sid in [s for s in self.streams if s > last_stream_id]:
                self._fail_stream(self.streams.pop(sid), h2.errors.ErrorCodes.REFUSED_STREAM)
        self.flush()
        if self.goaway and not self.streams:
            self.transport.close()

    def _malformed(self, sid: int, exc: MalformedHeaders) -> None:
        # RFC 9113 section 8.1.1: a stream error of type PROTOCOL_ERROR; the other streams go on.
        log.info("h2 upstream %s: stream %d: malformed header block: %s", self.endpoint.addr, sid, exc)
        try:
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def _on_response(self, ev) -> None:
        st = self.streams.get(ev.stream_id)
        if st is None:
            return
        try:
            status = check_response(ev.headers)
        except MalformedHeaders as exc:
            self.streams.pop(ev.stream_id, None)
            self._malformed(ev.stream_id, exc)
            st.settle(None, ProxyError(502, f"upstream sent a malformed response: {exc}"))
            if st.body_task is not None and not st.body_task.done():
                st.body_task.cancel()
            return
        if ev.stream_ended:
            body = EMPTY
            self.streams.pop(ev.stream_id, None)
        else:
            sid = ev.stream_id
            body = Body(None, on_consumed=lambda n, sid=sid: self.ack(sid, n), high_water=STREAM_WINDOW)
        st.body = body
        st.response = Response(status, regular_fields(ev.headers), body, endpoint=self.endpoint)
        if st.on_response is not None:
            self.answered.append(st)  # handed over after this read's events: its body may be in them
        else:
            st.settle(st.response)

    def _fail_stream(self, st: _ClientStream, code: int) -> None:
        if not st.settle(None, UpstreamReset(code)) and st.body is not None:
            st.body.abort(StreamReset(code, "upstream reset the stream"))
        if st.body_task is not None and not st.body_task.done():
            st.body_task.cancel()

    def _fail_all(self, exc: ProxyError) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            if not st.settle(None, exc) and st.body is not None:
                st.body.abort(StreamReset(h2.errors.ErrorCodes.CANCEL, "upstream connection lost"))
            if st.body_task is not None and not st.body_task.done():
                st.body_task.cancel()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.stats.closed += 1
        self.pool.forget(self)
        self.fail_waiters(ConnectionResetError("upstream connection lost"))
        self._fail_all(ProxyError(502, "upstream connection lost"))

    def eof_received(self) -> bool:
        return False

    @staticmethod
    def _head(request: Request) -> list[tuple[bytes, bytes]]:
        return [(b":method", request.method), (b":scheme", request.scheme),
                (b":authority", request.authority.encode("latin-1")), (b":path", request.target),
                *h2_fields(request.headers, skip=b"host")]

    def start(self, request: Request, on_response) -> int | None:
        """Send a bodiless request; ``on_response(response, exc)`` is called once, from this connection's
        callbacks (the direct path).  The stream id, or None when h2 would not open a stream now."""
        conn = self.conn
        sid = conn.get_next_available_stream_id()
        st = self.streams[sid] = _ClientStream(sid, request, None, on_response)
        try:
            conn.send_headers(sid, self._head(request), end_stream=True)
        except h2.exceptions.ProtocolError:
            del self.streams[sid]
            st.on_response = None
            return None
        self.flush_soon()
        return sid

    async def send(self, request: Request) -> Response:
        conn = self.conn
        sid = conn.get_next_available_stream_id()
        headers = self._head(request)
        body = request.body
        waiter = asyncio.get_running_loop().create_future()
        st = self.streams[sid] = _ClientStream(sid, request, waiter)
        conn.send_headers(sid, headers, end_stream=body is EMPTY)
        self.flush_soon()
        if body is not EMPTY:
            st.body_task = asyncio.get_running_loop().create_task(self._send_body(st, body))
        try:
            return await waiter
        except asyncio.CancelledError:
            # The client went away (or reset): cancel upstream too, RFC 9113 section 8.7.
            self.cancel(sid)
            raise

    def cancel(self, sid: int) -> None:
        """Forget stream *sid* and reset it (CANCEL): nobody wants its response any more."""
        st = self.streams.pop(sid, None)
        if st is not None and st.body_task is not None and not st.body_task.done():
            st.body_task.cancel()
        if self.closed:
            return
        try:
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    async def _send_body(self, st: _ClientStream, body: Body) -> None:
        sid = st.id
        try:
            await self.send_body(sid, body)
        except StreamReset as exc:  # the client reset: so do we, with its code
            self._reset_upstream(sid, exc.code)
        except BodyError:
            self._reset_upstream(sid, h2.errors.ErrorCodes.CANCEL)
        except (asyncio.CancelledError, ConnectionError, h2.exceptions.StreamClosedError,
                h2.exceptions.ProtocolError):
            pass

    def _reset_upstream(self, sid: int, code: int) -> None:
        st = self.streams.pop(sid, None)
        if st is not None:
            st.settle(None, BodyError("request body failed"))
        if not self.closed:
            try:
                self.conn.reset_stream(sid, code)
                self.flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass


class H2Pool(EndpointPool):
    """One multiplexed upstream connection per endpoint (more when one is full or going away)."""

    def __init__(self, connector, metrics, direction: str, *, connect_timeout: float) -> None:
        super().__init__(connector, metrics, direction, connect_timeout=connect_timeout)
        self._connecting: dict[Endpoint, asyncio.Future] = {}

    def usable(self, endpoint: Endpoint) -> H2ClientConnection | None:
        """A connection to *endpoint* with room for one more stream, if one is open."""
        return next((c for c in self.conns.get(endpoint, ()) if c.usable), None)

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
                if exc.code != h2.errors.ErrorCodes.REFUSED_STREAM or request.body is not EMPTY or attempt:
                    raise
        raise AssertionError("unreachable")
