"""HTTP/2 with prior knowledge: the client-facing server connection and the pool of upstream ones.

libnghttp2 (the HTTP/2 engine of nghttp2, curl and Apache httpd), through its
sans-IO binding ngh2, is the protocol machine; this module relays streams
between two of them.  An HTTP/2 request goes upstream as HTTP/2 (gRPC needs
trailers end to end), multiplexed over one connection per endpoint.  It
replaced the pure-Python h2 + hpack + hyperframe stack, which cost ~115 us of
CPU per proxied request by itself against ~5 us here (docs/performance.md).

Flow control, writes and the connection's phase, shared by both ends, are in
meshctl_proxy.transport.h2_connection; the upstream connection is
meshctl_proxy.transport.h2_client.

Resets travel both ways with their error code (a client's RST_STREAM cancels
the upstream stream; an upstream reset resets the client's stream).  A graceful
drain sends GOAWAY with the last stream id and serves the streams already open.

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
from ngh2 import (ConnectionClosed, DataReceived, GoAwayReceived, NGH2Error, PingReceived, RequestReceived, Role,
                  SettingsReceived, StreamClosed, TrailersReceived, WindowUpdated)

from meshctl_proxy.body import EMPTY, Body, BodyError
from meshctl_proxy.wire.h2headers import LoopDetected, MalformedHeaders, h2_fields, request_fields
from meshctl_proxy.wire.loop_marker import LOOP_STATUS
from meshctl_proxy.wire.h2limits import MAX_RESETS_PER_SECOND, FloodGuard
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.model import ConnectionContext, Endpoint, ProxyError, Request, Response
from meshctl_proxy.hooks import Watched
from meshctl_proxy.transport.exchange import Exchange, RequestPath, end_watch, replayable
from meshctl_proxy.transport.h2_client import H2ClientConnection
from meshctl_proxy.transport.h2_connection import (CANCEL, CONNECTION_WINDOW, ENHANCE_YOUR_CALM, INTERNAL_ERROR,
                                                   MAX_HEADER_LIST_SIZE, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM,
                                                   STREAM_WINDOW, Phase, StreamReset, UpstreamReset, H2Connection,
                                                   goaway_frame, without_goaway)

log = logging.getLogger("meshctl_proxy.http2")

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


class H2ServerConnection(H2Connection):
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

    def _receive_failed(self, exc: NGH2Error) -> None:
        if isinstance(exc, ngh2.DenialOfServiceError):
            self.calm(str(exc))
        else:
            self._protocol_error(exc)

    def _on_events(self, events: list) -> None:
        on_event = self._on_event
        for ev in events:
            t = type(ev)
            if t is RequestReceived:
                self._on_request(ev)
            elif t is not StreamClosed or cast(StreamClosed, ev).error_code:  # a stream that closed cleanly needs nothing
                on_event(ev)
                if self.closed:
                    return
        if self.bodiless:
            self._start_bodiless()

    def _read_done(self, heard: bool) -> None:
        # Bytes that made no event are a frame (a header block above all) still arriving: the
        # header-read timeout runs until one completes (class 5; HTTP/1's is in h1_server).
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
        failed = closed is not None and closed.error_code
        self._enter(Phase.LINGERING if failed else Phase.CLOSED)
        if data:
            self._write(data)
        self._abort_streams()
        if failed:
            log.info("h2 client %s: connection error %d: %s", self.ctx.client_addr, closed.error_code,
                     closed.debug_data.decode("latin-1"))
            self._linger()
        else:  # a drain that completed: every stream was answered
            self.transport.close()

    def _on_event(self, ev) -> None:
        t = type(ev)
        if t is StreamClosed:
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
            self._enter(Phase.DRAINING)  # the client said goodbye: finish what is open, then close
            self._maybe_close()

    def _on_request(self, ev) -> None:
        sid = ev.stream_id
        if sid > self.last_sid:
            self.last_sid = sid
        if self.phase is not Phase.OPEN:  # draining: RFC 9113 section 6.8 (processed: none of it)
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
        if exc is not None and replayable(st.request, exc):
            # Nothing was processed: the general path sends it again, once (the exchange's retry).
            if not self.closed and st.id in self.streams:
                st.task = self.loop.create_task(self._serve_stream(st, stats=stats, start=start, endpoint=endpoint,
                                                                   resend=True))
            return
        if self.path.observes:
            self.path.observe(st.request, endpoint, response, exc, latency)
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
            if self.phase is Phase.DRAINING:
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
        self._enter(Phase.LINGERING)  # read nothing more from this client
        self._abort_streams()
        self._linger()

    def _linger(self) -> None:
        # Half-close and linger briefly (Phase.LINGERING).
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
        self._enter(Phase.CLOSED)
        self.stats.closed += 1
        self.proxy.connections.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
        self.fail_waiters(ConnectionResetError("client connection lost"))
        self._abort_streams()

    def drain(self) -> None:
        """Graceful shutdown (RFC 9113 section 6.8): GOAWAY naming the last stream we accept, serve those,
        then close.  A connection already draining (the client's GOAWAY) just finishes."""
        if self.phase is not Phase.OPEN:
            return
        self._enter(Phase.DRAINING)
        self.conn.send_goaway(NO_ERROR, last_stream_id=self.last_sid)
        self.flush()
        self._maybe_close()

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
                            response: Response | None = None, latency_ms: float = 0.0, resend: bool = False) -> None:
        """The general path: the exchange (meshctl_proxy.transport.exchange), then relay the response.

        The direct path hands over here with *stats* already counted and the *endpoint* its shortcut
        chose (no stream room, or with *resend* a refused stream to send again), or with the *response*
        whose body is still to be relayed.
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
                    response = await exchange.run(endpoint, resend=resend)
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
