"""Class 5: no header-read timeout (docs/security.md).

A request head sent one byte every 2 s was still open after 60 s: any
client could hold connections and buffers for as long as it liked
(Slowloris).  Like nginx's ``client_header_timeout`` and Node's
``headersTimeout`` (60 s both), a head begun and not complete within
``MESHCTL_PROXY_HEADER_READ_TIMEOUT`` is answered 408 and the connection
closed.  Bodies and idle keep-alive connections are not what it measures.
Run with a short timeout, on every HTTP/1 listener, and at the upstream.
"""

from __future__ import annotations

import socket
import time

import pytest

from meshctl_proxy import config

TIMEOUT = 0.6


@pytest.fixture(scope="module")
def quick(request):
    from proxy.conftest import ProxyProcess

    p = ProxyProcess(MESHCTL_PROXY_HEADER_READ_TIMEOUT=f"{int(TIMEOUT * 1000)}ms",
                     MESHCTL_PROXY_SHUTDOWN_ENDPOINT_ENABLED="false")
    yield p
    p.terminate()


def drip(addr, data: bytes, *, gap: float, limit: float = 5.0) -> tuple[bytes, float]:
    """Send *data* a byte at a time, *gap* apart, reading whatever comes back; (reply, seconds until closed)."""
    started = time.monotonic()
    reply = b""
    with socket.create_connection(addr, timeout=limit) as s:
        s.settimeout(gap)
        for i in range(len(data)):
            try:
                s.sendall(data[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            except (TimeoutError, socket.timeout):
                pass
            if time.monotonic() - started > limit:
                break
        s.settimeout(limit)
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (TimeoutError, socket.timeout, ConnectionResetError):
            pass
    return reply, time.monotonic() - started


def recv_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_the_default_is_nginx_and_nodes_60_seconds():
    assert config.load({}).header_read_timeout == 60.0
    assert config.load({"MESHCTL_PROXY_HEADER_READ_TIMEOUT": "15s"}).header_read_timeout == 15.0
    with pytest.raises(config.ConfigError, match="HEADER_READ_TIMEOUT"):
        config.load({"MESHCTL_PROXY_HEADER_READ_TIMEOUT": "soon"})


@pytest.mark.parametrize("listener", ["outbound", "inbound", "admin"])
def test_a_head_dripped_a_byte_at_a_time_gets_408_and_is_closed(quick, upstream, listener):
    head = b"GET /slow HTTP/1.1\r\nHost: %s\r\nX-Filler: %s\r\n\r\n" % (upstream.authority.encode(), b"a" * 200)
    reply, took = drip(getattr(quick, listener), head, gap=0.05)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
    assert b"connection: close" in reply.lower()
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 2.0
    assert upstream.requests == []  # nothing of it went on


def test_a_slow_second_head_on_a_kept_alive_connection_is_timed_too(quick, upstream):
    host = upstream.authority.encode()
    with socket.create_connection(quick.outbound, timeout=5) as s:
        s.sendall(b"GET /one HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert b"ok 0" in recv_until(s, b"ok ")
        time.sleep(TIMEOUT * 1.5)  # idle between requests is not a head being read
        s.sendall(b"GET /two HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert b"ok 1" in recv_until(s, b"ok ")
        s.sendall(b"GET /three HTTP/1.1\r\nHo")  # begun, never finished
        started = time.monotonic()
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < TIMEOUT + 2.0
    assert [r.target for r in upstream.requests] == ["/one", "/two"]


def test_a_slow_body_is_not_cut_by_the_header_timeout(quick, upstream):
    host = upstream.authority.encode()
    with socket.create_connection(quick.outbound, timeout=5) as s:
        s.sendall(b"POST /body HTTP/1.1\r\nHost: %s\r\nContent-Length: 4\r\n\r\n" % host)
        for byte in b"abcd":
            time.sleep(TIMEOUT / 2)
            s.sendall(bytes([byte]))
        assert b"ok 0" in recv_until(s, b"ok ")
    assert [(r.target, r.body) for r in upstream.requests] == [("/body", b"abcd")]


def test_a_head_completed_in_time_in_pieces_is_served(quick, upstream):
    head = b"GET /pieces HTTP/1.1\r\nHost: %s\r\n\r\n" % upstream.authority.encode()
    reply, _ = drip(quick.outbound, head, gap=TIMEOUT / len(head) / 2, limit=1.0)
    assert reply.startswith(b"HTTP/1.1 200 ")


# --- HTTP/2: a header block (any frame) begun and not finished ---------------------------------------

def _h2_peer(quick, authority):
    from .test_h2_conformance import Peer

    return Peer(quick.outbound, authority)


def _goaway_debug(peer, timeout: float) -> bytes | None:
    from .test_h2_conformance import GOAWAY

    for ftype, _flags, _sid, payload in peer.frames(timeout):
        if ftype == GOAWAY:
            return payload[8:]
    return None


def test_http2_a_headers_frame_dripped_a_byte_at_a_time_ends_the_connection(quick, h2_upstream):
    peer = _h2_peer(quick, h2_upstream.authority)
    try:
        list(peer.frames(0.2))  # the server's SETTINGS and the ACK
        data = peer.headers(1, peer.block("/slow"))
        started = time.monotonic()
        for i in range(len(data)):
            peer.send(data[i:i + 1])
            time.sleep(0.05)
            if peer.closed or time.monotonic() - started > TIMEOUT + 2:
                break
        debug = _goaway_debug(peer, TIMEOUT + 2)
        assert debug is not None and b"not received in time" in debug
        assert time.monotonic() - started < TIMEOUT + 3
    finally:
        peer.close()
    assert h2_upstream.requests == []


def test_http2_a_header_block_dribbled_in_continuation_frames_is_timed_too(quick, h2_upstream):
    from .test_h2_conformance import CONTINUATION, HEADERS, frame

    peer = _h2_peer(quick, h2_upstream.authority)
    try:
        block = peer.block("/cont", extra=[("x-pad", "p" * 40)])
        peer.send(frame(HEADERS, 0, 1, block[:1]))
        # Complete CONTINUATION frames, spaced out, never the last one (fewer than libnghttp2's
        # own cap on CONTINUATIONs per block, which would end the connection first).
        for i in range(1, 6):
            time.sleep(TIMEOUT / 3)
            peer.send(frame(CONTINUATION, 0, 1, block[i:i + 1]))
            if peer.closed:
                break
        debug = _goaway_debug(peer, TIMEOUT + 2)
        assert debug is not None and b"not received in time" in debug
    finally:
        peer.close()
    assert h2_upstream.requests == []


def test_http2_an_idle_connection_is_not_what_the_timeout_measures(quick, h2_upstream):
    peer = _h2_peer(quick, h2_upstream.authority)
    try:
        list(peer.frames(0.2))
        time.sleep(TIMEOUT * 1.5)
        assert peer.still_serving(1) == 200
    finally:
        peer.close()
