"""Opaque TCP forwarding: two transports spliced together, with half-close.

Used for connections that are not HTTP (or on opaque ports) and for
HTTP/1.1 Upgrade tunnels after a 101.  Each side's EOF is passed on as a
write-EOF (shutdown(SHUT_WR)) to the other, so protocols that half-close
(``nc -N``, some RPC framings) keep working; the pair closes when both
directions are done or either side fails.  Backpressure: when one side's
write buffer fills, the other side stops reading.
"""

from __future__ import annotations

import asyncio

from meshctl_proxy.telemetry.metrics import TcpStats


class PipeEnd(asyncio.Protocol):
    """One side of a splice.  ``peer`` is the other side's PipeEnd."""

    __slots__ = ("transport", "peer", "stats", "eof", "closed", "on_closed", "_pending")

    def __init__(self, stats: TcpStats | None = None, on_closed=None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: PipeEnd | None = None
        self.stats = stats
        self.eof = False
        self.closed = False
        self.on_closed = on_closed
        self._pending: list[bytes] = []  # data that arrived before the peer was wired

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.stats is not None:
            self.stats.read_bytes += len(data)
        peer = self.peer
        if peer is None or peer.transport is None:
            self._pending.append(data)
            return
        peer.send(data)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.stats is not None:
            self.stats.write_bytes += len(data)
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and not peer.closed:
            if peer.eof:
                self.transport.close()
                peer.transport.close()
                return True
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                peer.transport.close()
        return True  # keep our write side open: the peer may still answer

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.stats is not None:
            self.stats.closed += 1  # whoever counted the open hands the connection over to us
        peer = self.peer
        if peer is not None and not peer.closed and peer.transport is not None:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        if self.on_closed is not None:
            callback, self.on_closed = self.on_closed, None
            callback()

    def start(self) -> None:
        """Flush what arrived before the peer was known."""
        pending, self._pending = self._pending, []
        for data in pending:
            self.peer.send(data)


def splice(down: PipeEnd, up: PipeEnd, *, to_up: bytes = b"", to_down: bytes = b"") -> None:
    """Wire two PipeEnds whose transports are connected; send the initial bytes each way."""
    down.peer, up.peer = up, down
    if down.eof and up.transport.can_write_eof():
        up.transport.write_eof()
    if to_up:
        up.send(to_up)
    if to_down:
        down.send(to_down)
    down.start()
    up.start()
