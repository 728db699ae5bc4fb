"""HTTP/2 with prior knowledge: a client's connection to the proxy.

libnghttp2 (the HTTP/2 engine of nghttp2, curl and Apache httpd), through its
sans-IO binding ngh2, is the protocol machine; this module relays streams
between two of them.  An HTTP/2 request goes upstream as HTTP/2 (gRPC needs
trailers end to end), multiplexed over one connection per endpoint.  It
replaced the pure-Python h2 + hpack + hyperframe stack, which cost ~115 us of
CPU per proxied request by itself against ~5 us here (docs/performance.md).

Flow control, writes and the connection's phase, shared by both ends, are in
meshctl_proxy.transport.h2_connection; each stream is served by h2_stream
(the general path) or h2_direct (bodiless requests with a shortcut), and goes
upstream on an h2_client connection.

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
from typing import cast

import ngh2
from ngh2 import (ConnectionClosed, DataReceived, GoAwayReceived, NGH2Error, PingReceived, RequestReceived, Role,
                  SettingsReceived, StreamClosed, TrailersReceived, WindowUpdated)

from meshctl_proxy.model import ConnectionContext, ProxyError
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.exchange import RequestPath
from meshctl_proxy.transport.h2_connection import (CANCEL, CLOSED, DRAINING, ENHANCE_YOUR_CALM, LINGERING,
                                                   MAX_HEADER_LIST_SIZE, NO_ERROR, OPEN, PROTOCOL_ERROR, REFUSED_STREAM,
                                                   STREAM_WINDOW, H2Connection, StreamReset, UpstreamReset)
from meshctl_proxy.transport.h2_direct import DirectPath
from meshctl_proxy.transport.h2_stream import RequestMaker, ServerStream
from meshctl_proxy.wire.h2headers import LoopDetected, MalformedHeaders, h2_fields
from meshctl_proxy.wire.h2limits import MAX_RESETS_PER_SECOND, FloodGuard
from meshctl_proxy.wire.loop_marker import LOOP_STATUS

log = logging.getLogger("meshctl_proxy.http2")

_StreamResetEvent = ngh2.StreamReset
_SERVER_CONFIG = ngh2.Configuration(
    auto_window_update=False,  # credit goes back as the upstream takes the bytes (h2_connection)
    max_inbound_header_list_size=MAX_HEADER_LIST_SIZE,
    # libnghttp2's own rapid-reset bucket (CVE-2023-44487), a backstop above FloodGuard's limit, which
    # answers first and with ENHANCE_YOUR_CALM; libnghttp2 would close with INTERNAL_ERROR.
    stream_reset_rate_limit=(10 * MAX_RESETS_PER_SECOND, 2 * MAX_RESETS_PER_SECOND),
)


class H2ServerConnection(H2Connection):
    """A client's HTTP/2 connection to the proxy."""

    def __init__(self, proxy, ctx: ConnectionContext, stats: TcpStats) -> None:
        super().__init__()
        self.proxy = proxy
        self.ctx = ctx
        self.stats = stats
        self.path = RequestPath(proxy, ctx, raw_errors=(UpstreamReset,))
        self.direct = DirectPath(self)
        self.requests = RequestMaker(ctx, proxy.loop_markers[ctx.direction])
        self.conn = ngh2.Connection(Role.SERVER, _SERVER_CONFIG)
        self.streams: dict[int, ServerStream] = {}
        self.guard = FloodGuard()
        self.bodiless: list[ServerStream] = []  # requests of this read, started once its events are in
        self._head_timer: asyncio.TimerHandle | None = None  # runs while a frame is arriving unfinished

    # -- transport callbacks ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.proxy.connections.add(self)
        log.debug("h2 client %s: connection accepted", self.ctx.client_addr)
        self._open(transport, {
            ngh2.Setting.MAX_CONCURRENT_STREAMS: self.proxy.config.http2_max_concurrent_streams,
            ngh2.Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            ngh2.Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })

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
        self._enter(LINGERING if failed else CLOSED)
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
        if t is StreamClosed:  # with an error code (_on_events): libnghttp2 closed it (a malformed frame)
            if self._stream_gone(ev, "stream closed") is not None:
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
            st = self._stream_gone(ev, "client reset the stream")
            # Only a stream reset before the proxy took it on counts towards the rapid-reset limit
            # (CVE-2023-44487, as hyper's max_pending_accept_reset_streams): cancelling calls that
            # were answered or are under way is what gRPC clients do (issue 13, class 12).
            if st is not None and not st.taken:
                self.calm(self.guard.on_reset(self.loop.time()))
        elif t is WindowUpdated:
            self.wake_windows(ev.stream_id)
        elif t is SettingsReceived:
            self.wake_windows(0)
            self.calm(self.guard.on_settings(self.loop.time()))
        elif t is PingReceived:
            self.calm(self.guard.on_ping(self.loop.time()))
        elif t is GoAwayReceived:
            self._enter(DRAINING)  # the client said goodbye: finish what is open, then close
            self._maybe_close()

    def _stream_gone(self, ev, reason: str) -> ServerStream | None:
        """The client's stream is closed or reset (*ev*'s code): stop serving it."""
        st = self.streams.pop(ev.stream_id, None)
        if st is not None:
            st.body.discard(StreamReset(ev.error_code, reason))
            st.cancel(reason)
        return st

    def _on_request(self, ev) -> None:
        sid = ev.stream_id
        if sid > self.last_sid:
            self.last_sid = sid
        if self.phase is not OPEN:  # draining: RFC 9113 section 6.8 (processed: none of it)
            self.conn.reset_stream(sid, REFUSED_STREAM)
            return
        try:
            request = self.requests.request(ev, self.ack)
        except MalformedHeaders as exc:
            self._refuse_malformed(sid, exc)
            return
        if request is None:
            self.conn.reset_stream(sid, PROTOCOL_ERROR)
            return
        st = self.streams[sid] = ServerStream(self, sid, request)
        if ev.end_stream:
            # Started once this read's events are in, so that a stream the client resets in the same
            # read (rapid reset, CVE-2023-44487) never reaches the upstream, as with a task.
            self.bodiless.append(st)
        else:
            st.serve_soon()

    def _start_bodiless(self) -> None:
        starting, self.bodiless = self.bodiless, []
        start_direct = self.direct.start
        for st in starting:
            if self.streams.get(st.id) is st and not start_direct(st):
                st.serve_soon()

    def end(self, sid: int) -> None:
        """Stream *sid* is over (answered, failed or abandoned): a draining connection may be done."""
        self.streams.pop(sid, None)
        if self.phase is DRAINING:
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

    def calm(self, reason: str | None) -> None:
        """GOAWAY(ENHANCE_YOUR_CALM) and close: the client is abusing the connection (h2limits' *reason*;
        None: it is not)."""
        if reason is None:
            return
        log.warning("h2 client %s: %s", self.ctx.client_addr, reason)
        self._close_with(ENHANCE_YOUR_CALM, reason)

    def _protocol_error(self, exc: Exception) -> None:
        log.info("h2 client %s: protocol error: %s", self.ctx.client_addr, exc)
        self._close_with(PROTOCOL_ERROR, str(exc))

    def _abort_streams(self) -> None:
        for st in list(self.streams.values()):
            st.body.abort(StreamReset(CANCEL, "connection closed"))
            st.cancel("connection closed")
        self.streams.clear()
        self.bodiless.clear()

    def _gone(self) -> None:
        self.proxy.connections.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._abort_streams()

    def drain(self) -> None:
        """Graceful shutdown (RFC 9113 section 6.8): GOAWAY naming the last stream we accept, serve those,
        then close.  A connection already draining (the client's GOAWAY) just finishes."""
        if self.phase is not OPEN:
            return
        self._enter(DRAINING)
        self.conn.send_goaway(NO_ERROR, last_stream_id=self.last_sid)
        self.flush()
        self._maybe_close()
