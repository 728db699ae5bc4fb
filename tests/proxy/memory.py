"""An asyncio transport without a socket, for sans-IO tests of the proxy's connections (and the CPU benches).

Writes are kept (``take()``), or, given a *loop*, delivered to the ``peer``
protocol's ``data_received`` on the next loop pass, one delivery per pass, as a
socket would.  Reading can be paused and resumed (``reading``), closing and EOF are
recorded, and extra info (``peername``, ``sockname``, ``ssl_object``...) comes
from *extra*.  ``MemoryConnector`` is the proxy's Connector seam over it: every
upstream connection the proxy opens is one of these, listed in ``opened``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class MemoryTransport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, *, peer: asyncio.Protocol | None = None,
                 extra: dict | None = None) -> None:
        super().__init__(extra)
        self.loop = loop
        self.peer = peer
        self.protocol: asyncio.Protocol | None = None
        self.out = bytearray()
        self.pending: list[bytes] = []
        self.writes = 0
        self.closed = False
        self.aborted = False
        self.eof = False
        self.reading = True

    # -- what the protocol under test calls ---------------------------------------------
    def write(self, data) -> None:
        self.writes += 1
        if self.loop is None:  # keeping, not delivering (the peer may be set after the first write)
            self.out += data
            return
        if not self.pending:
            self.loop.call_soon(self._deliver)
        self.pending.append(bytes(data))

    def _deliver(self) -> None:
        data = b"".join(self.pending)
        self.pending.clear()
        if not self.closed:
            self.peer.data_received(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[return-value]

    def get_write_buffer_size(self) -> int:
        return 0

    # -- what the test reads --------------------------------------------------------------
    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


class MemoryConnector:
    """The proxy's Connector seam: each upstream connection is a MemoryTransport, kept in ``opened``."""

    def __init__(self) -> None:
        self.opened: list[tuple[MemoryTransport, asyncio.Protocol]] = []

    async def connect(self, endpoint, protocol_factory: Callable[[], asyncio.Protocol], *, alpn=None):
        transport = MemoryTransport()
        protocol = protocol_factory()
        transport.protocol = protocol
        protocol.connection_made(transport)
        self.opened.append((transport, protocol))
        return transport, protocol
