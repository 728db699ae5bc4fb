"""The HTTP/2 connections' phase (transport.h2_connection.Phase), both ends, without sockets.

Each test drives a connection through one edge of the diagram in Phase's docstring and
checks what the peer sees on the wire as well as the phase itself.
"""

from __future__ import annotations

import asyncio

import h2.errors
import h2.events
import pytest

from meshctl_proxy.body import Body
from meshctl_proxy.model import Request, Response
from meshctl_proxy.transport.h2_connection import Phase, UpstreamReset, goaway_frame

from .test_http2_relay import Harness, Upstream


def _slow_handler(gate: asyncio.Event):
    async def handler(request):
        await gate.wait()
        return Response(200, [], Body.of(b"late"))
    return handler


def test_server_drain_refuses_new_streams_and_closes_after_the_last_one():
    async def main():
        gate = asyncio.Event()
        h = Harness(_slow_handler(gate))
        assert h.server.phase is Phase.OPEN
        sid = h.request(b"/slow")
        await h.settle()
        h.server.drain()
        h.server.drain()  # a second call sends no second GOAWAY
        await h.settle()
        assert h.server.phase is Phase.DRAINING and h.goaways == [(sid, 0)]
        late = h.request(b"/late")  # the client had not read the GOAWAY yet: above its last stream id,
        await h.settle()  # so ignored (RFC 9113 section 6.8), and the client may retry it elsewhere
        assert not [e for e in h.events if getattr(e, "stream_id", None) == late]
        assert not h.transport.closed
        gate.set()
        await h.settle()
        assert h.server.phase is Phase.CLOSED and h.transport.closed and not h.transport.eof

    asyncio.run(main())


def test_server_finishes_open_streams_after_the_clients_goaway_and_sends_none_of_its_own():
    async def main():
        gate = asyncio.Event()
        h = Harness(_slow_handler(gate))
        sid = h.request(b"/slow")
        # The client's GOAWAY, written past h2 (whose state machine would read nothing more after it).
        h.server.data_received(goaway_frame(0, 0))
        assert h.server.phase is Phase.DRAINING
        h.server.drain()  # the proxy shuts down meanwhile: the connection is already on its way out
        await h.settle()
        assert h.goaways == [] and not h.transport.closed
        gate.set()
        await h.settle()
        data = b"".join(e.data for e in h.events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
        assert data == b"late" and h.server.phase is Phase.CLOSED and h.transport.closed

    asyncio.run(main())


def test_server_lingers_after_a_connection_error_and_reads_nothing_more():
    async def main():
        h = Harness(_slow_handler(asyncio.Event()))
        for i in range(200):  # a PING flood: h2limits answers GOAWAY(ENHANCE_YOUR_CALM)
            h.client.ping(b"%08d" % i)
        h.pump()
        assert h.server.phase is Phase.LINGERING and h.server.closed
        assert [code for _last, code in h.goaways] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
        assert h.transport.eof and not h.transport.closed  # half-closed: the GOAWAY gets read first
        before = h.server.conn.events()
        h.client.ping(b"12345678")
        h.server.data_received(h.client.data_to_send())
        assert h.transport.take() == b"" and h.server.conn.events() == before  # not read at all
        h.server.connection_lost(None)
        assert h.server.phase is Phase.CLOSED

    asyncio.run(main())


def test_client_drains_on_the_servers_goaway_leaves_the_pool_and_closes_after_its_last_stream():
    async def main():
        up = Upstream()
        endpoint = up.conn.endpoint
        assert up.pool.usable(endpoint) is up.conn
        task = asyncio.ensure_future(up.conn.send(Request(b"GET", b"/", "svc", [], protocol="h2")))
        for _ in range(3):
            await asyncio.sleep(0)
            up.pump()
        sid = up.requests[-1].stream_id
        up.server.send_headers(sid, [(b":status", b"200")])
        up.pump()
        response = await asyncio.wait_for(task, 2)
        # GOAWAY naming the open stream, which is still served (written past h2, which would send nothing after it).
        up.conn.data_received(goaway_frame(sid, 0))
        assert up.conn.phase is Phase.DRAINING
        assert up.pool.usable(endpoint) is None and endpoint not in up.pool.conns
        assert not up.transport.closed
        up.server.send_data(sid, b"last", end_stream=True)
        up.pump()
        assert await response.body.read_all(100) == b"last"
        assert up.conn.phase is Phase.CLOSED and up.transport.closed

    asyncio.run(main())


def test_client_closes_on_a_protocol_error_and_fails_its_open_streams():
    async def main():
        up = Upstream()
        task = asyncio.ensure_future(up.conn.send(Request(b"GET", b"/", "svc", [], protocol="h2")))
        for _ in range(3):
            await asyncio.sleep(0)
            up.pump()
        up.conn.data_received(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # WINDOW_UPDATE of 0 (RFC 9113 section 6.9)
        assert up.conn.phase is Phase.CLOSED and up.pool.usable(up.conn.endpoint) is None
        with pytest.raises(UpstreamReset) as err:
            await asyncio.wait_for(task, 2)
        assert err.value.code == h2.errors.ErrorCodes.PROTOCOL_ERROR

    asyncio.run(main())
