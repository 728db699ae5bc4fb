"""A streamed message body: one producer feeds chunks, one consumer reads them.

Bodies are never buffered whole: the producer (a socket protocol) calls
:meth:`Body.feed`, and when more than ``high_water`` bytes wait unread the
body calls ``pause`` (the producer stops reading its socket) until the
consumer has drained it, then ``resume``.  HTTP/2 uses ``on_consumed``
instead, to return flow-control credit only for bytes that moved on: that is
what makes backpressure hold end to end (RFC 9113 section 5.2).

A retry policy that needs to replay a body reads it with :meth:`read_all`
(bounded) and builds fresh bodies with :meth:`Body.of`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

# 64 KiB is one default HTTP/2 window and four socket reads: enough to keep a
# pipe busy, small enough that a thousand slow streams stay in tens of MiB.
HIGH_WATER = 64 * 1024


class BodyError(Exception):
    """The body's producer failed (peer reset, connection lost, malformed framing)."""


class Body:
    __slots__ = ("_chunks", "_buffered", "_done", "_exc", "_waiter", "trailers", "length",
                 "_pause", "_resume", "_on_consumed", "_paused", "_high", "_discarding", "consumed")

    def __init__(self, length: int | None = None, *, pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None, on_consumed: Callable[[int], None] | None = None,
                 high_water: int = HIGH_WATER) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.length = length  # declared length (Content-Length), None when unknown
        self._pause = pause
        self._resume = resume
        self._on_consumed = on_consumed
        self._paused = False
        self._high = high_water
        self._discarding = False
        self.consumed = 0  # bytes handed to the consumer so far (what was relayed, for the request hook)

    @classmethod
    def of(cls, data: bytes = b"", trailers: list[tuple[bytes, bytes]] | None = None) -> "Body":
        """A complete body holding *data* (for generated responses and replays)."""
        body = cls(len(data))
        if data:
            body._chunks.append(data)
            body._buffered = len(data)
        body._done = True
        body.trailers = trailers
        return body

    # -- producer side ---------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._done:
            if self._discarding and self._on_consumed is not None:
                self._on_consumed(len(data))  # nobody will read it: its credit goes straight back
            return
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._buffered > self._high and self._pause is not None and not self._paused:
            self._paused = True
            self._pause()

    def finish(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self._done:
            return
        self._done = True
        if trailers:
            self.trailers = trailers
        self._wake()

    def abort(self, exc: BaseException) -> None:
        if self._done and not self._chunks:
            return
        self._exc = exc
        self._done = True
        self._chunks.clear()
        self._wake()

    def discard(self, exc: BaseException | None = None) -> None:
        """The consumer will read no more (its side went away, or the exchange ended without it).

        Buffered bytes and any fed later are dropped with their credit returned
        (``on_consumed``) at once: HTTP/2 flow-control windows are shared by a
        connection's streams, and credit held by a body nobody reads would stall
        the others.  A read after this raises *exc* (BodyError by default).  A
        body already read to its end (EMPTY among them) is left as it is.
        """
        if self._done and not self._chunks:
            return
        n = self._buffered
        self._chunks.clear()
        self._buffered = 0
        if self._exc is None:
            self._exc = exc or BodyError("the body's reader went away")
        self._done = True
        self._discarding = True
        if self._paused:
            self._paused = False
            self._resume()
        if n and self._on_consumed is not None:
            self._on_consumed(n)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- consumer side ---------------------------------------------------------
    @property
    def done(self) -> bool:
        """Everything has been read (or the producer failed)."""
        return self._done and not self._chunks

    @property
    def discarded(self) -> bool:
        """The consumer has gone (discard()): the producer may as well stop."""
        return self._discarding

    @property
    def buffered(self) -> int:
        """Bytes delivered and not yet read."""
        return self._buffered

    @property
    def complete(self) -> bool:
        """The producer has delivered the whole body (it may still be unread)."""
        return self._done and self._exc is None

    def read_nowait(self) -> bytes | None:
        """All buffered bytes, b"" at the end, None when the consumer must wait."""
        if self._chunks:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            n = self._buffered
            self._buffered = 0
            self.consumed += n
            if self._paused:
                self._paused = False
                self._resume()
            if self._on_consumed is not None:
                self._on_consumed(n)
            return data
        if self._exc is not None:
            raise self._exc
        if self._done:
            return b""
        return None

    async def read(self) -> bytes:
        """The next bytes of the body; b"" once it is complete."""
        while True:
            data = self.read_nowait()
            if data is not None:
                return data
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def read_all(self, limit: int) -> bytes:
        """The whole body, for policies that must replay it; BodyError past *limit* bytes."""
        parts, total = [], 0
        while data := await self.read():
            total += len(data)
            if total > limit:
                raise BodyError(f"body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)


EMPTY = Body.of(b"")  # shared: a finished body with nothing in it never changes state
