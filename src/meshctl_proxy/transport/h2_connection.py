"""What both ends of an HTTP/2 connection share: flow control, writes, stream errors.

Flow control holds end to end: libnghttp2's automatic WINDOW_UPDATEs are off,
DATA from one side is acknowledged only when the other side has taken it
(``Body(on_consumed=...)``), and we hand libnghttp2 only what fits the peer's
windows, waiting for its WINDOW_UPDATE otherwise (RFC 9113 section 5.2), so
the proxy never reads ahead of the slower side.
"""

from __future__ import annotations

import asyncio

import ngh2
from ngh2 import NGH2Error

from meshctl_proxy.body import Body, BodyError
from meshctl_proxy.model import ProxyError
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.connection import FlowControl
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


class _Sender(FlowControl):
    """Hands DATA to libnghttp2 within the peer's flow-control windows and writes its output; both ends."""

    def __init__(self) -> None:
        FlowControl.__init__(self)  # every stream waiting for the socket to drain (transport.connection)
        self.conn: ngh2.Connection = None
        self.transport: asyncio.Transport | None = None  # set by connection_made
        self.window_waiters: dict[int, asyncio.Future] = {}
        self.stats: TcpStats | None = None
        self.closed = False
        self.flush_scheduled = False
        self.pending = 0  # DATA bytes handed to libnghttp2 since the last flush (not yet off its windows)
        self.loop = asyncio.get_running_loop()

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
        """Write what libnghttp2 has queued at the end of this loop pass: streams answered together
        share one write (a syscall per frame was the largest cost per request)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

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
