"""The stale-connection retry, written once (meshctl_proxy.transport.exchange.replayable), through real proxies.

An upstream may close a kept-alive connection just as the proxy reuses it
(its idle timeout racing the next request), or refuse an HTTP/2 stream it did
not process.  Those attempts may be sent again on a fresh connection, once,
when the request has no body (RFC 9112 section 9.3.1, RFC 9113 section 8.7);
anything else is the client's 502 or reset.  Checked on the HTTP/1 fast path
(a lone GET), the HTTP/1 general path (a pipelined GET waiting behind
another), the HTTP/2 direct path, and for requests that must not be retried.
"""

from __future__ import annotations

import asyncio
import socket

import h2.errors
import h2.events
import httpx
import pytest

from .apps import H2Server
from .conftest import metric_sum
from .test_proxy_http2 import RawH2, auth


class ClosesReusedConnections:
    """An HTTP/1.1 upstream that answers the first request of each connection (keep-alive) and closes the
    connection, unanswered, when a second request arrives on it: a pooled connection gone stale."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request line)
        self.connections = 0

    async def start(self) -> "ClosesReusedConnections":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                self.requests.append((number, line))
                for field in head.split(b"\r\n"):
                    if field.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(field.split(b":", 1)[1]))
                if served:
                    break  # the second request on this connection: close without a byte of response
                served += 1
                body = b"conn %d" % number
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self) -> None:
        self.server.close()


@pytest.fixture
def stale_app(loop_thread):
    a = loop_thread.run(ClosesReusedConnections().start())
    yield a
    loop_thread.run(a.stop())


def test_a_get_on_a_pooled_connection_the_server_closed_is_sent_again_on_a_fresh_one(start_proxy, stale_app):
    p = start_proxy()
    host = f"127.0.0.1:{stale_app.port}"
    with httpx.Client(timeout=10) as c:
        first = c.get(p.url("outbound", "/a"), headers={"Host": host})
        second = c.get(p.url("outbound", "/b"), headers={"Host": host})  # the fast path (a lone bodiless GET)
    assert (first.status_code, first.text) == (200, "conn 1")
    assert (second.status_code, second.text) == (200, "conn 2")  # answered on the fresh connection
    # /b went out twice: on the stale connection (closed unanswered), then once on a new one.
    assert stale_app.requests == [(1, b"GET /a HTTP/1.1"), (1, b"GET /b HTTP/1.1"), (2, b"GET /b HTTP/1.1")]
    m = p.metrics()
    assert metric_sum(m, "response_total", direction="outbound", status_code="200") == 2
    assert metric_sum(m, "request_total", direction="outbound") == 2  # a retry is not a second request


def test_a_pipelined_get_on_the_general_path_is_sent_again_once(start_proxy, stale_app):
    p = start_proxy()
    host = f"127.0.0.1:{stale_app.port}".encode()
    # Two requests in one write: the first takes the fast path, the second waits behind it and is
    # sent by the general path (the exchange) on the pooled connection the first left, which is stale.
    data = b"GET /a HTTP/1.1\r\nHost: %s\r\n\r\nGET /b HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
        host, host)
    with socket.create_connection(p.outbound, timeout=10) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.count(b"HTTP/1.1 200 OK") == 2, got
    assert got.index(b"conn 1") < got.index(b"conn 2")
    assert stale_app.requests == [(1, b"GET /a HTTP/1.1"), (1, b"GET /b HTTP/1.1"), (2, b"GET /b HTTP/1.1")]


def test_a_request_with_a_body_is_never_sent_again(start_proxy, stale_app):
    p = start_proxy()
    host = f"127.0.0.1:{stale_app.port}"
    with httpx.Client(timeout=10) as c:
        assert c.get(p.url("outbound", "/a"), headers={"Host": host}).status_code == 200
        r = c.post(p.url("outbound", "/b"), content=b"x" * 10, headers={"Host": host})
    assert r.status_code == 502 and "closed" in r.headers["meshctl-proxy-error"]
    assert stale_app.requests == [(1, b"GET /a HTTP/1.1"), (1, b"POST /b HTTP/1.1")]  # once, not replayed


def test_a_fresh_connection_closed_before_answering_is_not_retried(start_proxy, stale_app):
    """Only a reused connection can be stale; a server that closes a new connection unanswered failed it."""
    p = start_proxy()
    host = f"127.0.0.1:{stale_app.port}"
    with httpx.Client(timeout=10) as c:
        c.get(p.url("outbound", "/a"), headers={"Host": host})
        c.get(p.url("outbound", "/b"), headers={"Host": host})  # stale 1, then fresh 2 answers
        r = c.get(p.url("outbound", "/c"), headers={"Host": host})  # reused 2: stale, then fresh 3 answers
    assert r.status_code == 200 and r.text == "conn 3"
    # Exactly one retry each time: never a third attempt for one request.
    assert [line for _, line in stale_app.requests].count(b"GET /c HTTP/1.1") == 2


@pytest.fixture
def h2_server(loop_thread):
    a = loop_thread.run(H2Server().start())
    yield a
    loop_thread.run(a.stop())


def _get(raw: RawH2, app, path: bytes) -> list:
    sid = raw.request([(b":method", b"GET"), (b":path", path), (b":authority", auth(app).encode()),
                       (b":scheme", b"http")])
    return raw.until_stream_done(sid)


def test_an_http2_stream_the_upstream_refused_is_sent_again_once(start_proxy, h2_server):
    p = start_proxy()
    raw = RawH2(p.outbound)
    try:
        events = _get(raw, h2_server, b"/refuse-once?key=k1")
        status = [dict(e.headers)[b":status"] for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert status == [b"200"]
        assert [r[b":path"] for r in h2_server.requests].count(b"/refuse-once?key=k1") == 2
        # Refused every time: sent twice, then the client sees the refusal itself.
        events = _get(raw, h2_server, b"/reset?code=7")
        resets = [e.error_code for e in events if isinstance(e, h2.events.StreamReset)]
        assert resets == [h2.errors.ErrorCodes.REFUSED_STREAM]
        assert [r[b":path"] for r in h2_server.requests].count(b"/reset?code=7") == 2
        # Any other reset is the upstream's answer, passed on and never retried.
        events = _get(raw, h2_server, b"/reset?code=2")
        assert [e.error_code for e in events if isinstance(e, h2.events.StreamReset)] == [2]
        assert [r[b":path"] for r in h2_server.requests].count(b"/reset?code=2") == 1
    finally:
        raw.close()
