"""HTTP/1.1 connections without sockets, as playbooks: bytes in from each side, writes out, checked in order.

The proxy's real ``H1ServerConnection`` (the client's side) and the
``H1ClientConnection`` its pool opens (the upstream's side) run on a real event
loop over in-memory transports (``tests/proxy/memory.py``; the pool connects
through the Connector seam).  What a test feeds is what a socket would deliver;
what it reads is what the proxy wrote, per side.
"""

from __future__ import annotations

import asyncio

from meshctl_proxy import config
from meshctl_proxy.model import OUTBOUND, ConnectionContext
from meshctl_proxy.policy.router import DirectRouter
from meshctl_proxy.transport.h1_server import H1ServerConnection, Phase
from meshctl_proxy.transport.server import Proxy

from .memory import MemoryConnector, MemoryTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Playbook:
    def __init__(self) -> None:
        cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
                           "MESHCTL_PROXY_IDENTITY_DISABLED": "true"})
        self.connector = MemoryConnector()
        self.proxy = Proxy(cfg, connector=self.connector)
        self.proxy.routers[OUTBOUND] = DirectRouter()
        ctx = ConnectionContext(OUTBOUND, ("127.0.0.1", 50000), ("127.0.0.1", 4140), None)
        self.server = H1ServerConnection(self.proxy, ctx, self.proxy.metrics.tcp(OUTBOUND, "src", None, None, "x"))
        self.client = MemoryTransport()
        self.server.connection_made(self.client)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def from_client(self, data: bytes) -> None:
        self.server.data_received(data)
        await self.settle()

    async def client_eof(self) -> None:
        self.server.eof_received()
        await self.settle()

    def upstream(self, i: int = -1) -> tuple[MemoryTransport, asyncio.Protocol]:
        return self.connector.opened[i]

    async def from_upstream(self, data: bytes, i: int = -1) -> None:
        self.upstream(i)[1].data_received(data)
        await self.settle()

    def to_upstream(self, i: int = -1) -> bytes:
        return self.upstream(i)[0].take()

    def to_client(self) -> bytes:
        return self.client.take()


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def test_pipelined_requests_go_up_one_at_a_time_and_come_back_in_order():
    async def play():
        pb = Playbook()
        await pb.from_client(b"GET /1 HTTP/1.1\r\nHost: app:80\r\n\r\nGET /2 HTTP/1.1\r\nHost: app:80\r\n\r\n")
        up = pb.to_upstream()
        assert up.startswith(b"GET /1 HTTP/1.1\r\n") and b"/2" not in up  # one exchange at a time
        assert pb.to_client() == b""
        await pb.from_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        first = pb.to_client()
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\na")
        assert len(pb.connector.opened) == 1  # the kept-alive upstream connection carries the second
        assert pb.to_upstream().startswith(b"GET /2 HTTP/1.1\r\n")
        await pb.from_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        second = pb.to_client()
        assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"\r\n\r\nb")
        assert not pb.client.closed

    run(play())


def test_100_continue_is_relayed_before_the_body_and_the_final_response():
    async def play():
        pb = Playbook()
        await pb.from_client(b"POST /up HTTP/1.1\r\nHost: app:80\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        head = pb.to_upstream()
        assert head.startswith(b"POST /up HTTP/1.1\r\n") and b"content-length: 5" in head.lower()
        assert pb.to_client() == b""  # nothing until the upstream says so
        await pb.from_upstream(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert pb.to_client() == b"HTTP/1.1 100 Continue\r\n\r\n"
        await pb.from_client(b"hello")
        assert pb.to_upstream() == b"hello"
        await pb.from_upstream(OK)
        assert pb.to_client().startswith(b"HTTP/1.1 200 OK\r\n")

    run(play())


def test_the_bytes_after_a_refused_upgrade_are_the_next_request():
    async def play():
        pb = Playbook()
        await pb.from_client(b"GET /ws HTTP/1.1\r\nHost: app:80\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
                             b"GET /next HTTP/1.1\r\nHost: app:80\r\n\r\n")
        up = pb.to_upstream()
        assert up.startswith(b"GET /ws HTTP/1.1\r\n") and b"upgrade: echo" in up.lower()
        assert b"/next" not in up  # held while the upgrade may still be accepted
        await pb.from_upstream(OK)  # refused: an ordinary response
        assert pb.to_client().startswith(b"HTTP/1.1 200 OK\r\n")
        nxt = pb.to_upstream()
        assert nxt.startswith(b"GET /next HTTP/1.1\r\n")
        await pb.from_upstream(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert pb.to_client().startswith(b"HTTP/1.1 204 No Content\r\n")

    run(play())


def test_eof_in_the_middle_of_a_request_body_ends_both_sides():
    async def play():
        pb = Playbook()
        await pb.from_client(b"POST /up HTTP/1.1\r\nHost: app:80\r\nContent-Length: 10\r\n\r\nabcd")
        up_transport, _ = pb.upstream()
        assert pb.to_upstream().endswith(b"\r\n\r\nabcd")
        await pb.client_eof()
        assert up_transport.aborted  # the upstream cannot get a whole request: its connection is cut
        assert pb.client.closed
        out = pb.to_client()  # the client half-closed; it may still read the answer
        assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"meshctl-proxy-error: request body failed" in out
        assert b"connection: close" in out
        assert not pb.proxy.upstreams[OUTBOUND].h1.conns.get(pb.upstream()[1].endpoint)  # not pooled

    run(play())


def test_drain_finishes_the_response_in_flight_then_closes():
    async def play():
        pb = Playbook()
        await pb.from_client(b"GET /slow HTTP/1.1\r\nHost: app:80\r\n\r\n")
        pb.server.drain()
        await pb.settle()
        assert not pb.client.closed  # the request in flight is answered first
        await pb.from_upstream(OK)
        out = pb.to_client()
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in out.lower()
        assert pb.client.closed

    run(play())


def test_drain_closes_an_idle_connection_at_once():
    async def play():
        pb = Playbook()
        await pb.from_client(b"GET / HTTP/1.1\r\nHost: app:80\r\n\r\n")
        await pb.from_upstream(OK)
        assert pb.to_client().startswith(b"HTTP/1.1 200 OK\r\n")
        pb.server.drain()
        await pb.settle()
        assert pb.client.closed
        assert pb.to_client() == b""

    run(play())


def test_the_phase_follows_the_request_cycle():
    async def play():
        pb = Playbook()
        assert pb.server.phase is Phase.IDLE
        await pb.from_client(b"GET / HTTP/1.1\r\nHost: app:80\r\n\r\n")
        assert pb.server.phase is Phase.EXCHANGING
        await pb.from_upstream(OK)
        assert pb.server.phase is Phase.IDLE
        pb.server.drain()
        assert pb.server.phase is Phase.DRAINING
        pb.server.connection_lost(None)
        assert pb.server.phase is Phase.CLOSED

    run(play())


def test_a_refused_first_request_is_answered_once():
    async def play():
        pb = Playbook()
        await pb.from_client(b"GET / HTTP/1.1\r\nHost: app:80\r\nContent-Length: x\r\n\r\n")
        out = pb.to_client()
        assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert out.count(b"HTTP/1.1 ") == 1  # (it used to be written twice)
        assert pb.client.eof and not pb.client.closed  # half-closed, lingering for the client to read it
        assert pb.server.phase is Phase.DRAINING
        assert pb.connector.opened == []

    run(play())


def test_an_accepted_upgrade_turns_the_connection_into_a_tunnel():
    async def play():
        pb = Playbook()
        await pb.from_client(b"GET /ws HTTP/1.1\r\nHost: app:80\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nearly")
        pb.to_upstream()
        await pb.from_upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhi")
        out = pb.to_client()
        assert out.startswith(b"HTTP/1.1 101 ") and out.endswith(b"\r\n\r\nhi")
        assert pb.server.phase is Phase.TUNNELLED
        assert pb.to_upstream() == b"early"  # what the client sent after its head, held until the 101
        pb.client.protocol.data_received(b"ping")
        await pb.settle()
        assert pb.to_upstream() == b"ping"

    run(play())


def test_a_request_refused_while_another_is_in_flight_closes_lingering_on_either_path():
    """The response in flight says close, then the connection half-closes and lingers (RFC 9112 section
    9.6) whether that response came by the fast path or the general one (the fast path closed at once)."""
    async def play(first: bytes):
        pb = Playbook()
        await pb.from_client(first)
        await pb.from_client(b"GET / HTTP/1.1\r\nHost: app:80\r\nContent-Length: x\r\n\r\n")
        assert pb.server.refusal is not None and not pb.client.eof
        await pb.from_upstream(OK)
        out = pb.to_client()
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in out.lower()
        assert pb.client.eof and not pb.client.closed
        assert pb.server.phase is Phase.DRAINING

    run(play(b"GET /fast HTTP/1.1\r\nHost: app:80\r\n\r\n"))
    run(play(b"POST /general HTTP/1.1\r\nHost: app:80\r\nContent-Length: 1\r\n\r\nx"))


def test_a_streamed_answer_on_the_general_path_finishes_before_the_next_pipelined_request_goes_up():
    async def play():
        pb = Playbook()
        await pb.from_client(b"POST /1 HTTP/1.1\r\nHost: app:80\r\nContent-Length: 1\r\n\r\nx"
                             b"GET /2 HTTP/1.1\r\nHost: app:80\r\n\r\n")
        assert pb.to_upstream().startswith(b"POST /1 HTTP/1.1\r\n")
        await pb.from_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        assert pb.to_client().endswith(b"\r\n\r\nab")
        assert pb.server.phase is Phase.RESPONDING
        assert pb.to_upstream() == b""  # /2 waits for /1's body to end
        await pb.from_upstream(b"cd")
        assert pb.to_client() == b"cd"
        assert pb.to_upstream().startswith(b"GET /2 HTTP/1.1\r\n")
        await pb.from_upstream(OK)
        assert pb.to_client().startswith(b"HTTP/1.1 200 OK\r\n")
        assert pb.server.phase is Phase.IDLE

    run(play())


def test_each_http1_connection_class_stays_under_300_lines():
    """Issue 12: the connection classes stay small; a job that grows goes into its own module beside them."""
    import ast
    from pathlib import Path

    import meshctl_proxy.transport as transport

    sizes = {}
    for path in Path(transport.__file__).parent.glob("h1_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                sizes[node.name] = node.end_lineno - node.lineno + 1
    assert {"H1ServerConnection", "H1ClientConnection", "FastPath", "GeneralPath"} <= set(sizes)
    assert max(sizes.values()) < 300, sizes
