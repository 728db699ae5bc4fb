"""Class 4: request loops (docs/security.md).

A request addressed to one of the proxy's own listeners under another
spelling of the address (IPv4-mapped IPv6, ``127.1``, decimal and hex forms,
upper-case names) looped through the proxy until it ran out of file
descriptors; the same route reached the admin listener (with the shutdown
endpoint enabled, a remote POST stopped the proxy).  Now addresses are
compared in canonical form, every forwarded request carries the proxy's Via
mark and a request carrying it again is refused (508, RFC 9110 section
7.6.3), and the admin listener refuses anything the proxy forwarded.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from meshctl_proxy.wire import http1
from meshctl_proxy.wire.loop_marker import LoopMarker

from .peers import H2Client, TcpRelay, http1_exchange, wait_until

# Spellings the resolver takes to this machine's listeners on 127.0.0.1 (the test proxy's address)
# or to every listener (0.0.0.0 and :: reach the local host's).
LOOPBACK_SPELLINGS = [
    "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0X7F000001", "0x7f.1", "0177.0.0.1",
    "0177.1", "017700000001", "127.000.000.001", "[::ffff:127.0.0.1]", "[::FFFF:7f00:1]",
    "localhost", "LOCALHOST", "LocalHost", "0", "0.0.0.0", "0x0", "[::]",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_a_listener_address_is_a_loop(host):
    from meshctl_proxy.model import ProxyError
    from meshctl_proxy.policy.router import DirectRouter

    router = DirectRouter(own_addrs=frozenset({("127.0.0.1", 4140), ("0.0.0.0", 4143), ("::", 4191)}))
    for port in (4140, 4143, 4191):
        with pytest.raises(ProxyError, match="loop"):
            router.endpoint_for(host.strip("[]"), port)
    assert router.endpoint_for(host.strip("[]"), 8080).port == 8080  # other ports are the application's


def test_a_neighbour_on_another_loopback_address_is_not_a_loop():
    """meshctl demo's pods share the loopback network: a listener on 127.0.10.2:5000 is not 127.0.10.102:5000."""
    from meshctl_proxy.policy.router import DirectRouter

    router = DirectRouter(own_addrs=frozenset({("127.0.10.2", 5000)}))
    assert router.endpoint_for("127.0.10.102", 5000).host == "127.0.10.102"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("listener", ["outbound", "inbound", "admin"])
def test_a_request_to_the_proxys_own_listener_is_refused_at_once(proxy, listener):
    port = getattr(proxy, listener)[1]
    for host in LOOPBACK_SPELLINGS:
        started = time.monotonic()
        answers, _ = http1_exchange(proxy.outbound, b"GET /metrics HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                                    % (host.encode(), port))
        assert time.monotonic() - started < 2.0, host
        assert [a.status for a in answers] == [502], host
        assert "loop" in answers[0].get("meshctl-proxy-error"), host


@pytest.mark.parametrize("host", ["127.1", "[::ffff:127.0.0.1]", "LOCALHOST"])
def test_the_inbound_side_refuses_its_own_ports_too(proxy, host):
    for listener in ("inbound", "admin", "outbound"):
        port = getattr(proxy, listener)[1]
        answers, _ = http1_exchange(proxy.inbound, b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port))
        assert [a.status for a in answers] == [502], listener


def test_http2_requests_to_its_own_listeners_are_refused(proxy):
    with H2Client(proxy.outbound) as c:
        for host in ("127.1", "[::ffff:127.0.0.1]", "0x7f000001"):
            sid = c.request([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                             (":authority", f"{host}:{proxy.outbound[1]}")])
            answer = c.answer(sid)
            assert answer is not None and answer.status == 502, host


def test_the_proxy_does_not_run_out_of_file_descriptors(proxy):
    before = open_fds(proxy.proc.pid)
    for host in LOOPBACK_SPELLINGS:
        http1_exchange(proxy.outbound, b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), proxy.outbound[1]))
    assert wait_until(lambda: open_fds(proxy.proc.pid) <= before + 5, timeout=5)


@pytest.fixture
def relay_to(loop_thread):
    """``relay_to(addr)``: a TCP relay on loopback to *addr* (a NAT or port-forward the proxy cannot see through)."""
    relays = []

    def make(addr) -> TcpRelay:
        r = loop_thread.run(TcpRelay(addr).start())
        relays.append(r)
        return r

    yield make
    for r in relays:
        loop_thread.run(r.stop())


def test_a_loop_through_a_relay_is_stopped_by_the_via_mark(proxy, relay_to):
    relay = relay_to(proxy.outbound)
    answers, _ = http1_exchange(proxy.outbound, b"GET /loop HTTP/1.1\r\nHost: %s\r\n\r\n" % relay.authority.encode())
    assert [a.status for a in answers] == [508]
    assert "loop" in answers[0].get("meshctl-proxy-error")
    assert relay.connections == 1  # round once, then stopped


def test_an_http2_loop_through_a_relay_is_stopped_too(proxy, relay_to):
    relay = relay_to(proxy.outbound)
    with H2Client(proxy.outbound) as c:
        sid = c.request([(":method", "GET"), (":path", "/loop"), (":scheme", "http"), (":authority", relay.authority)])
        answer = c.answer(sid)
    assert answer is not None and answer.status == 508
    assert relay.connections == 1


def test_the_upstream_sees_the_via_mark_and_other_vias_are_kept(proxy, upstream):
    answers, _ = http1_exchange(proxy.outbound, b"GET / HTTP/1.1\r\nHost: %s\r\nVia: 1.0 fred, 1.1 p.example\r\n\r\n"
                                % upstream.authority.encode())
    assert [a.status for a in answers] == [200]
    vias = upstream.requests[0].get("via")
    assert vias[0] == "1.0 fred, 1.1 p.example"
    assert re.fullmatch(r"1\.1 meshctl-[0-9a-f]{8}-out", vias[1])


def test_a_hairpin_through_the_other_side_is_not_a_loop():
    """A pod calling its own Service may be balanced to itself: outbound's mark reaching inbound is fine."""
    outbound, inbound = LoopMarker.new("outbound"), LoopMarker.new("inbound")
    reader = http1.RequestReader((inbound,))
    events = reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\nVia: %s\r\n\r\n" % outbound.entry("http/1"))
    assert type(events[0]) is http1.RequestHead
    with pytest.raises(http1.H1Error) as exc:
        http1.RequestReader((inbound,)).feed(b"GET / HTTP/1.1\r\nHost: x\r\nVia: 1.0 a, %s\r\n\r\n"
                                             % inbound.entry("http/1"))
    assert exc.value.status == 508


def test_the_admin_listener_refuses_what_the_proxy_forwarded(relay_to, start_proxy):
    p = start_proxy(MESHCTL_PROXY_SHUTDOWN_ENDPOINT_ENABLED="true")
    relay = relay_to(p.admin)  # the admin port behind a name the proxy cannot recognise
    for request in (b"GET /metrics HTTP/1.1\r\nHost: %s\r\n\r\n", b"POST /shutdown HTTP/1.1\r\nHost: %s\r\n"
                    b"Content-Length: 0\r\n\r\n"):
        answers, _ = http1_exchange(p.outbound, request % relay.authority.encode())
        assert [a.status for a in answers] == [508]
    for host in ("127.1", "[::ffff:127.0.0.1]", "LOCALHOST", "2130706433"):
        answers, _ = http1_exchange(p.outbound, b"POST /shutdown HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: 0\r\n\r\n"
                                    % (host.encode(), p.admin[1]))
        assert [a.status for a in answers] == [502]
    time.sleep(0.2)
    assert p.proc.poll() is None and p.admin_get("/ready")[0] == 200  # still up
