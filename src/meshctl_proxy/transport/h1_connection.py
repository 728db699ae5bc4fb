"""What both HTTP/1 ends share (:mod:`~meshctl_proxy.transport.h1_server`, :mod:`~meshctl_proxy.transport.h1_client`):
writes held to the end of the loop's pass, and flow control.
"""

from __future__ import annotations

import asyncio

from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.connection import FlowControl
from meshctl_proxy.transport.outbox import Outbox


class HeldWrites(FlowControl, asyncio.Protocol):
    """Both ends write through the loop's outbox (meshctl_proxy.transport.outbox): at the end of the
    pass, with HTTP/2's output.

    Every close, abort and hand-over flushes first, so nothing written before
    it goes after it.  ``connection_made`` sets ``_outbox``.
    """

    stats: TcpStats
    transport: asyncio.Transport | None
    _outbox: Outbox

    def _write(self, data: bytes) -> None:
        self.stats.write_bytes += len(data)
        self._outbox.write(self.transport, data)

    def _close(self) -> None:
        self._outbox.flush()
        self.transport.close()

    def _abort(self) -> None:
        self._outbox.flush()
        self.transport.abort()
