"""What both ends of an HTTP/2 connection share: the phase, the shape of a read, flow control, writes.

Flow control holds end to end: libnghttp2's automatic WINDOW_UPDATEs are off,
DATA from one side is acknowledged only when the other side has taken it
(``Body(on_consumed=...)``), and we hand libnghttp2 only what fits the peer's
windows, waiting for its WINDOW_UPDATE otherwise (RFC 9113 section 5.2), so
the proxy never reads ahead of the slower side.

A connection's state is its ``Phase``, kept in one place (``_enter``); the
streams' own states (RFC 9113 section 5.1) are libnghttp2's.
"""

from __future__ import annotations

import asyncio
import enum

import ngh2
from ngh2 import NGH2Error

from meshctl_proxy.body import Body, BodyError
from meshctl_proxy.model import ProxyError
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.connection import FlowControl
from meshctl_proxy.transport.outbox import outbox
from meshctl_proxy.wire.h2headers import h2_fields


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


class StreamReset(BodyError):
    """A stream was reset by one side; ``code`` is carried to the other side."""

    def __init__(self, code: int, reason: str = "stream reset") -> None:
        super().__init__(f"{reason} (error code {int(code)})")
        self.code = code


class UpstreamReset(ProxyError):
    """The upstream reset the stream before responding: HTTP/2 clients see the reset itself.

    REFUSED_STREAM means the server did no work on it (RFC 9113 section 8.7):
    it may be sent again (exchange.replayable)."""

    def __init__(self, code: int) -> None:
        super().__init__(502, f"upstream reset the stream (error code {code})")
        self.code = code
        self.unprocessed = code == REFUSED_STREAM


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


class Phase(enum.IntEnum):
    """Where an HTTP/2 connection is in its life, for both ends (h11 keeps its state the same way)::

        OPEN --GOAWAY sent or received--> DRAINING --its last stream ends--> CLOSED
          |                                  |                                 ^
          +--connection error (server)--> LINGERING --1 s, or the peer closes--+
        any phase --transport lost-------------------------------------------> CLOSED

    OPEN: streams come and go.  DRAINING (RFC 9113 section 6.8): a GOAWAY went one way or the
    other, so no new stream starts on this connection (the server refuses them, the pool hands the
    connection out no more); those already open finish, then the connection closes.  LINGERING
    (server only, RFC 9113 section 5.4.1): a connection error, our GOAWAY naming it is written and
    the write side half-closed; nothing more is read, and the close waits a moment, because closing
    with unread input sends a TCP RST that can destroy the GOAWAY before the client reads it (the
    "lingering close" of RFC 9112 section 9.6).  CLOSED: nothing more is read or written.
    """

    OPEN = 0
    DRAINING = 1
    LINGERING = 2
    CLOSED = 3


# The members as module globals, which the code compares with: on CPython 3.11 ``Phase.OPEN`` is a
# lookup through the enum's metaclass, ~0.4 us against ~0.05 for a global, and the hot paths test
# the phase for every request.
OPEN, DRAINING, LINGERING, CLOSED = Phase.OPEN, Phase.DRAINING, Phase.LINGERING, Phase.CLOSED


class H2Connection(FlowControl, asyncio.Protocol):
    """One end of an HTTP/2 connection (the base of both): its phase, the shape of a read, DATA handed to
    libnghttp2 within the peer's flow-control windows, and libnghttp2's output written."""

    def __init__(self) -> None:
        FlowControl.__init__(self)  # every stream waiting for the socket to drain (transport.connection)
        self.conn: ngh2.Connection = None
        self.transport: asyncio.Transport | None = None  # set by connection_made
        self.streams: dict = {}  # the open streams, by id; each end keeps its own kind
        self.phase = OPEN
        self.last_sid = 0  # the highest stream id the peer opened (GOAWAY's last_stream_id)
        self.window_waiters: dict[int, asyncio.Future] = {}
        self.stats: TcpStats | None = None
        # phase >= LINGERING, kept as a plain attribute: the hot paths test it on every event
        self.closed = False
        self.flush_scheduled = False
        self.pending = 0  # DATA bytes handed to libnghttp2 since the last flush (not yet off its windows)
        self.loop = asyncio.get_running_loop()
        self.outbox = outbox(self.loop)
        self._flusher = self._scheduled_flush  # one bound method, handed to the outbox per pass

    def _enter(self, phase: Phase) -> None:
        """The connection's phase changes here, and only here."""
        self.phase = phase
        self.closed = phase >= LINGERING

    def _open(self, transport: asyncio.Transport, settings: dict) -> None:
        """Our SETTINGS (the preface, RFC 9113 section 3.4) and the connection's receive window."""
        self.transport = transport
        conn = self.conn
        conn.initiate_connection(settings)
        conn.set_local_window_size(CONNECTION_WINDOW)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(CLOSED)
        self.stats.closed += 1
        self.fail_waiters(ConnectionResetError("connection lost"))
        self._gone()

    def _gone(self) -> None:
        """The transport is gone: each end lets go of its streams and of whoever holds the connection."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        """One read, the same at both ends: libnghttp2 takes the bytes, the end handles the events they
        made, its answers go out, then come the events libnghttp2 made while writing them."""
        self.stats.read_bytes += len(data)
        if self.closed:
            return
        conn = self.conn
        try:
            conn.receive_data(data)
        except NGH2Error as exc:
            self._receive_failed(exc)
            return
        events = conn.events()
        self._on_events(events)
        if self.closed:
            return
        self.flush()
        if self.closed:
            return
        # Streams libnghttp2 closed while writing (a reset it sent for a malformed frame) report here.
        late = conn.events()
        if late:
            self._on_events(late)
            if self.closed:
                return
            self.flush()
        self._read_done(bool(events or late))

    def _receive_failed(self, exc: NGH2Error) -> None:
        """libnghttp2 refused what the peer sent: the connection cannot go on."""
        raise NotImplementedError

    def _on_events(self, events: list) -> None:
        """Handle the events of one read (each end its own)."""
        raise NotImplementedError

    def _read_done(self, heard: bool) -> None:
        """After a read (*heard*: it made events): a draining connection may be done."""
        self._maybe_close()

    def _maybe_close(self) -> None:
        """DRAINING ends with its last stream (RFC 9113 section 6.8): what is queued goes out, then close."""
        if self.phase is DRAINING and not self.streams:
            self.flush()
            if not self.closed:
                self._enter(CLOSED)
                self.transport.close()

    def eof_received(self) -> bool:
        return False  # the peer's FIN ends the connection (HTTP/2 has no half-closed connections)

    def _close_with(self, code: int, reason: str, *, data: bytes | None = None) -> None:
        """A connection error (RFC 9113 section 5.4.1): GOAWAY naming *reason*, written by hand whatever
        libnghttp2's state, and LINGERING.  *data*: libnghttp2's last output, when it was taken already."""
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
        self._enter(LINGERING)  # read nothing more from this client
        self._abort_streams()
        self._linger()

    def _linger(self) -> None:
        """Half-close and close a moment later (Phase.LINGERING says why)."""
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(1.0, transport.close)
        else:
            transport.close()

    def _abort_streams(self) -> None:
        """A connection error with streams open (_close_with): each ends (the server's; a client fails its own, _fail)."""
        raise NotImplementedError

    def reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM now, with *code* (RFC 9113 section 6.4); nothing when libnghttp2 closed the stream already."""
        if self.closed:
            return
        try:
            self.conn.reset_stream(stream_id, code)
            self.flush()
        except NGH2Error:
            pass

    def flush(self) -> None:
        conn = self.conn
        data = conn.data_to_send()
        self.pending = 0
        if self.closed:
            return
        if not conn.want_read:
            self._ended(data)
        elif data:
            self._write(data)

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
        self.fail_drain_waiters(exc)

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
                await self.drained()

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
