"""HTTP/1.1 Upgrade tunnels: after a 101 (RFC 9110 section 7.8) both connections become an opaque pipe.

The upstream connection that switched protocols is handed over as an
:class:`Upgraded` (``Response.upgraded``, set by the pooled client when it
reads the 101); the client-facing connection calls :func:`start_tunnel`, which writes the 101
and gives both transports to a splice (:mod:`meshctl_proxy.transport.tcp`)
with the bytes each side sent after its head.  From then on neither HTTP connection object sees the transports again.
"""

from __future__ import annotations

from collections.abc import Callable

from meshctl_proxy.model import Response
from meshctl_proxy.telemetry.metrics import TcpStats
from meshctl_proxy.transport.h1_connection import HeldWrites
from meshctl_proxy.transport.tcp import PipeEnd, splice
from meshctl_proxy.wire import http1


class Upgraded:
    """An upstream connection that switched protocols (101): the tunnel's far end."""

    __slots__ = ("transport", "tail", "protocol_name", "stats")

    def __init__(self, transport, tail: bytes, protocol_name: bytes, stats: TcpStats) -> None:
        self.stats = stats
        self.transport = transport
        self.tail = tail  # what the upstream sent after its 101, for the client
        self.protocol_name = protocol_name


def start_tunnel(conn: HeldWrites, response: Response, pending: bytes, on_closed: Callable[[], None]) -> None:
    """Write the 101 to the client connection *conn* and splice it to the upgraded upstream
    (``response.upgraded``).  *pending*: what the client sent after its Upgrade request; *on_closed* runs
    when the client's side closes."""
    upgraded = response.upgraded
    assert isinstance(upgraded, Upgraded)
    headers = response.headers + [(b"connection", b"upgrade"), (b"upgrade", upgraded.protocol_name)]
    conn._write(http1.response_head(101, response.reason, headers))
    conn._outbox.flush()  # the 101 goes before anything the tunnel writes
    client = conn.transport
    down = PipeEnd(conn.stats)
    up = PipeEnd(upgraded.stats)
    client.set_protocol(down)
    down.connection_made(client)
    upgraded.transport.set_protocol(up)
    up.connection_made(upgraded.transport)
    down.on_closed = on_closed
    splice(down, up, to_up=pending, to_down=upgraded.tail)
    upgraded.transport.resume_reading()
    client.resume_reading()
