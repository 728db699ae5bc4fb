"""Class 7: idle upstream connections without bound.

6,000 spellings of one backend's address (``127.1``, ``0x7f.0.0.1``, ``0177.0.0.01``...) each made a
pool of their own and left 6,000 idle upstream connections; idle connections never timed out.  Now
endpoints are compared in canonical form (``meshctl_proxy.wire.addresses``), an idle connection
closes after ``MESHCTL_PROXY_UPSTREAM_IDLE_TIMEOUT`` (hyper's 90 s by default) and no more than
``MESHCTL_PROXY_UPSTREAM_MAX_IDLE`` stay idle in all.  Counted where it matters: the upstream's own
open connections.
"""

from __future__ import annotations

import itertools
import socket

import h11
import pytest

from meshctl_proxy.wire.addresses import canonical_host

from .peers import H2Client, RecordingUpstream, wait_until


def loopback_spellings(count: int) -> list[str]:
    """*count* distinct spellings of 127.0.0.1 as inet_aton reads them (octal with a leading 0, hex with 0x).

    Each part keeps its value: 127 as 127, 0177 or 0x7f; 0 and 1 with any number of leading zeros
    (a leading zero before 127 would make it octal 0127 = 87, another host: never generated).
    """
    high = ["127", "0x7f", "0X7F", "0x07f", "0x007F"] + ["0" * k + "177" for k in range(1, 8)]
    zero = ["0" * k for k in range(1, 11)] + ["0x" + "0" * k for k in range(1, 4)]
    one = ["0" * k + "1" for k in range(0, 10)] + ["0x" + "0" * k + "1" for k in range(0, 3)]
    four = (".".join(p) for p in itertools.product(high, zero, zero, one))
    spellings = list(itertools.islice(four, count))
    assert len(set(spellings)) == count and {canonical_host(s) for s in spellings} == {"127.0.0.1"}
    return spellings


def test_spellings_of_one_address_are_one_endpoint():
    for spelling in ("127.1", "0x7f.1", "2130706433", "0177.0.0.1", "127.0.0.0001", "[::ffff:127.0.0.1]",
                     "0:0:0:0:0:ffff:7f00:1", "127.000.000.001"):
        assert canonical_host(spelling) == "127.0.0.1", spelling
    assert canonical_host("LocalHost") == "localhost"
    assert canonical_host("Web.Shop.SVC.cluster.local") == "web.shop.svc.cluster.local"
    assert canonical_host("[0:0::1]") == "::1"
    # What the resolver would reach, not what the text suggests: a leading 0 is octal.
    assert canonical_host("0127.0.0.1") == "87.0.0.1"
    # Not addresses: names, kept as names (lower case); a trailing dot is kept (absolute vs search list).
    assert canonical_host("256.1.1.1") == "256.1.1.1"
    assert canonical_host("web.") == "web."


def _keepalive_requests(addr, hosts, path: str = "/", *, batch: int = 50) -> list[int]:
    """One HTTP/1.1 connection, one request per Host, pipelined *batch* at a time; the statuses.

    The proxy answers pipelined requests one after the other (RFC 9112 section 9.3.2), so the
    upstream still sees one exchange at a time, without a client round trip between them.
    """
    statuses = []
    with socket.create_connection(addr, timeout=10) as sock:
        conn = h11.Connection(h11.CLIENT)
        for first in range(0, len(hosts), batch):
            group = hosts[first:first + batch]
            sock.sendall(b"".join(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode() for host in group))
            for _ in group:
                conn.send(h11.Request(method="GET", target=path, headers=[("host", "x")]))
                conn.send(h11.EndOfMessage())
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(sock.recv(65536))
                    elif isinstance(event, h11.Response):
                        statuses.append(event.status_code)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                conn.start_next_cycle()
    return statuses


def test_thousands_of_spellings_of_one_backend_share_one_upstream_connection(proxy, upstream):
    # The run used 6,000 (6,000 idle connections); 1,200 (past the 1,024 idle cap) show the same
    # in a fifth of the time.
    spellings = loopback_spellings(1200)
    statuses = _keepalive_requests(proxy.outbound, [f"{s}:{upstream.port}" for s in spellings], batch=100)
    assert statuses == [200] * 1200
    assert len(upstream.requests) == 1200
    # One client connection, one request at a time: one upstream connection did it all.
    assert upstream.connections == 1 and upstream.open == 1


def test_http2_authorities_spelt_differently_share_one_upstream_connection(proxy, h2_upstream):
    spellings = loopback_spellings(300)
    with H2Client(proxy.outbound) as client:
        for spelling in spellings:
            sid = client.request([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                  (":authority", f"{spelling}:{h2_upstream.port}")])
            answer = client.answer(sid)
            assert answer is not None and answer.status == 200, spelling
    assert len(h2_upstream.requests) == 300
    assert h2_upstream.connections == 1


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_idle_upstream_connections_close_after_the_idle_timeout(start_proxy, upstream, h2_upstream, protocol):
    p = start_proxy(MESHCTL_PROXY_UPSTREAM_IDLE_TIMEOUT="300ms")
    target = upstream if protocol == "HTTP/1.1" else h2_upstream
    before = target.open  # the module's proxy may keep one of its own open
    if protocol == "HTTP/1.1":
        assert _keepalive_requests(p.outbound, [upstream.authority]) == [200]
    else:
        with H2Client(p.outbound) as client:
            sid = client.request([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                  (":authority", h2_upstream.authority)])
            assert client.answer(sid).status == 200
    assert wait_until(lambda: target.open == before + 1, 1)  # kept for reuse at first...
    assert wait_until(lambda: target.open == before, 2), "idle upstream connection never closed"  # ...then closed


def test_idle_connections_are_capped_across_endpoints(start_proxy, loop_thread):
    """Twelve backends, each left one idle connection: only MESHCTL_PROXY_UPSTREAM_MAX_IDLE stay open."""
    backends = [loop_thread.run(RecordingUpstream().start()) for _ in range(12)]
    try:
        p = start_proxy(MESHCTL_PROXY_UPSTREAM_MAX_IDLE="4")
        statuses = _keepalive_requests(p.outbound, [b.authority for b in backends])
        assert statuses == [200] * 12
        assert all(b.connections == 1 for b in backends)
        assert wait_until(lambda: sum(b.open for b in backends) == 4, 2), [b.open for b in backends]
        # The longest idle went first: the last four backends keep theirs.
        assert [b.open for b in backends] == [0] * 8 + [1] * 4
        # A capped endpoint still works: a new connection.
        assert _keepalive_requests(p.outbound, [backends[0].authority]) == [200]
        assert backends[0].connections == 2
    finally:
        for b in backends:
            loop_thread.run(b.stop())
