"""HTTP/1.1 through a real meshctl-proxy process, with real clients (httpx, curl, raw sockets)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time

import httpx
import pytest

from .conftest import metric_sum


def host(app) -> str:
    return f"127.0.0.1:{app.port}"


def raw_exchange(addr, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send *data*, read until the proxy closes the connection."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_get_routed_by_host_with_hop_by_hop_headers_removed(proxy, app):
    r = httpx.get(proxy.url("outbound", "/hello?x=1"), headers={
        "Host": host(app), "Connection": "keep-alive, X-Private", "X-Private": "secret", "X-End": "kept",
        "Keep-Alive": "timeout=5"})
    assert r.status_code == 200
    seen = {k: v for k, v in r.json()["headers"]}
    assert r.json()["target"] == "/hello?x=1"
    assert seen["x-end"] == "kept" and seen["host"] == host(app)
    assert "x-private" not in seen and "keep-alive" not in seen


def test_large_bodies_stream_both_ways(proxy, app):
    body = bytes(range(256)) * 4096 * 2  # 2 MiB
    r = httpx.post(proxy.url("outbound", "/echo"), content=body, headers={"Host": host(app)}, timeout=20)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    r = httpx.get(proxy.url("outbound", "/big?size=3000000"), headers={"Host": host(app)}, timeout=20)
    assert len(r.content) == 3000000 and r.headers["content-length"] == "3000000"


def test_chunked_request_body_is_forwarded(proxy, app):
    def gen():
        for i in range(20):
            yield f"part{i},".encode()

    r = httpx.post(proxy.url("outbound", "/echo"), content=gen(), headers={"Host": host(app)})
    expected = b"".join(f"part{i},".encode() for i in range(20))
    assert r.json()["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_chunked_response_is_streamed_not_buffered(proxy, app):
    with httpx.Client(timeout=10) as client:
        start = time.monotonic()
        with client.stream("GET", proxy.url("outbound", "/chunked?n=4&gap=0.4"), headers={"Host": host(app)}) as r:
            first_at = None
            data = b""
            for piece in r.iter_raw():
                if first_at is None:
                    first_at = time.monotonic() - start
                data += piece
        total = time.monotonic() - start
    assert data == b"chunk0;chunk1;chunk2;chunk3;"
    assert first_at < 0.8 < total  # the first chunk arrived long before the last


def test_keep_alive_reuses_one_upstream_connection(start_proxy, app):
    p = start_proxy()
    before = app.connections
    with httpx.Client() as client:
        for i in range(10):
            assert client.get(p.url("outbound", f"/n{i}"), headers={"Host": host(app)}).status_code == 200
    assert app.connections - before == 1
    m = p.metrics()
    assert metric_sum(m, "tcp_open_total", direction="outbound", peer="src") == 1
    assert metric_sum(m, "tcp_open_total", direction="outbound", peer="dst") == 1


def test_expect_100_continue_is_relayed(proxy, app, tmp_path):
    payload = tmp_path / "payload"
    payload.write_bytes(b"z" * 5000)
    start = time.monotonic()
    out = subprocess.run(["curl", "-sS", "--expect100-timeout", "5", "-H", "Expect: 100-continue",
                          "-H", f"Host: {host(app)}", "--data-binary", f"@{payload}", "-v",
                          proxy.url("outbound", "/echo")], capture_output=True, timeout=20)
    elapsed = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert b"HTTP/1.1 100 Continue" in out.stderr
    assert json.loads(out.stdout)["body_len"] == 5000
    assert elapsed < 3  # curl did not sit out its 5 s expect timeout


def test_upgrade_is_tunnelled_after_101(proxy, app):
    with socket.create_connection(proxy.outbound, timeout=5) as s:
        s.sendall(f"GET /ws HTTP/1.1\r\nHost: {host(app)}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: echo" in head.lower()
        s.sendall(b"ping-1")
        got = b""
        while len(got) < len(b"echo:ping-1"):
            got += s.recv(4096)
        assert got == b"echo:ping-1"


def test_refused_upgrade_falls_back_to_http(proxy, app):
    """No 101 from upstream: nothing is tunnelled, the response is ordinary."""
    r = httpx.get(proxy.url("outbound", "/plain"), headers={"Host": host(app), "Connection": "Upgrade",
                                                           "Upgrade": "other"})
    assert r.status_code == 200 and r.json()["target"] == "/plain"


def test_close_delimited_response_is_rechunked(proxy, app):
    with httpx.Client() as client:
        r = client.get(proxy.url("outbound", "/close"), headers={"Host": host(app)})
        assert r.content == b"until-close"
        assert client.get(proxy.url("outbound", "/after"), headers={"Host": host(app)}).status_code == 200


def test_head_request(proxy, app):
    r = httpx.head(proxy.url("outbound", "/echo"), headers={"Host": host(app)})
    assert r.status_code == 200 and r.content == b""


def test_upstream_refused_is_502_with_reason(proxy):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = httpx.get(proxy.url("outbound", "/"), headers={"Host": f"127.0.0.1:{port}"})
    assert r.status_code == 502
    assert "failed" in r.headers["meshctl-proxy-error"]


def test_request_to_the_proxy_itself_is_refused_not_looped(proxy):
    r = httpx.get(proxy.url("outbound", "/"), headers={"Host": f"127.0.0.1:{proxy.outbound[1]}"})
    assert r.status_code == 502 and "loop" in r.headers["meshctl-proxy-error"]


def test_inbound_forwards_to_the_host_port_on_the_forward_host(proxy, app):
    r = httpx.get(proxy.url("inbound", "/in"), headers={"Host": f"web.example:{app.port}"})
    assert r.status_code == 200 and r.json()["target"] == "/in"


def test_curl_and_absolute_form_target(proxy, app):
    out = subprocess.run(["curl", "-sS", "--proxy", proxy.url("outbound"), f"http://{host(app)}/via-proxy"],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["target"] == "/via-proxy"


ATTACKS = {
    "cl-and-te": b"POST /smuggle HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n",
    "te-and-cl": b"POST /smuggle HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
                 b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n",
    "duplicate-cl": b"POST /smuggle HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n"
                    b"GET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n",
    "bare-lf": b"GET /smuggle HTTP/1.1\nHost: {h}\n\n",
    "obs-fold": b"GET /smuggle HTTP/1.1\r\nHost: {h}\r\nX: a\r\n b\r\n\r\n",
    "bad-chunk": b"POST /smuggle HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    "te-not-chunked": b"POST /smuggle HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "two-hosts": b"GET /smuggle HTTP/1.1\r\nHost: {h}\r\nHost: evil\r\n\r\n",
    "space-before-colon": b"GET /smuggle HTTP/1.1\r\nHost: {h}\r\nContent-Length : 5\r\n\r\nabcde",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_smuggling_attempts_get_400_and_close_and_reach_nobody(proxy, app, name):
    before = len(app.requests)
    reply = raw_exchange(proxy.outbound, ATTACKS[name].replace(b"{h}", host(app).encode()))
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"connection: close" in reply.lower()
    assert reply.count(b"HTTP/1.1") == 1  # nothing after the refusal: the connection closed
    time.sleep(0.05)
    assert len(app.requests) == before


def test_oversized_headers_get_431(proxy, app):
    reply = raw_exchange(proxy.outbound, f"GET / HTTP/1.1\r\nHost: {host(app)}\r\nX-Big: {'a' * 70000}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_bad_chunk_mid_body_after_forwarding_started(proxy, app):
    before = len(app.requests)
    reply = raw_exchange(proxy.outbound, f"POST /x HTTP/1.1\r\nHost: {host(app)}\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         f"5\r\nhello\r\nzz\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 400 ")
    time.sleep(0.05)
    assert len(app.requests) == before  # the upstream never saw a complete request


def test_inbound_policy_applies_to_fast_path_requests(start_proxy, app):
    """A bodiless GET on a warm connection takes the fast path; the inbound policy still decides."""
    p = start_proxy(MESHCTL_PROXY_DEFAULT_INBOUND_POLICY="deny")
    with httpx.Client() as client:
        for _ in range(3):
            r = client.get(p.url("inbound", "/secret"), headers={"Host": host(app)})
            assert r.status_code == 403
    allow = start_proxy()
    with httpx.Client() as client:
        for _ in range(3):
            r = client.get(allow.url("inbound", "/x"), headers={"Host": host(app), "meshctl-client-id": "forged"})
            assert r.status_code == 200
            seen = {k: v for k, v in r.json()["headers"]}
            assert "meshctl-client-id" not in seen  # only a verified peer identity is passed on
