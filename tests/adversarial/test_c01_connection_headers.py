"""Class 1: framing and routing headers named in ``Connection`` (docs/security.md).

A request listing ``Content-Length`` or ``Transfer-Encoding`` in
``Connection`` lost that header but kept its body: the upstream then read a
second request out of the body (request smuggling, its response left on a
pooled connection for the next client).  Listing ``Host`` sent an HTTP/1.1
request without Host.  The proxy now keeps framing and Host whatever
``Connection`` says; other names it lists are still removed (RFC 9110
section 7.6.1).  Checked on both listeners, in both directions (a hostile
upstream's response too), on HTTP/2 (where ``connection`` is malformed), and
at the upstream: how many requests it read, with which headers.
"""

from __future__ import annotations

import pytest

from .peers import H2Client, ScriptedUpstream, http1_exchange

LISTENERS = ("outbound", "inbound")

CONNECTION_SPELLINGS = [
    b"Connection: content-length",
    b"Connection: Content-Length",
    b"Connection: keep-alive, CONTENT-LENGTH",
    b"Connection: ,content-length ,",
    b"Connection: keep-alive\r\nConnection: content-length",  # two fields: one list (RFC 9110 section 5.3)
    b"Connection: content-length, host, x-private",
]


def smuggled(upstream) -> bytes:
    return b"GET /smuggled HTTP/1.1\r\nHost: %s\r\n\r\n" % upstream.authority.encode()


@pytest.mark.parametrize("which", LISTENERS)
@pytest.mark.parametrize("connection", CONNECTION_SPELLINGS)
def test_content_length_named_in_connection_is_kept_with_its_body(proxy, upstream, which, connection):
    body = smuggled(upstream)
    request = (b"POST /first HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\nX-Private: p\r\n\r\n"
               % (upstream.authority.encode(), len(body), connection)) + body
    answers, rest = http1_exchange(getattr(proxy, which), request, linger=0.2)
    assert [a.status for a in answers] == [200] and rest == b""
    (seen,) = upstream.requests  # one request, not two
    assert seen.target == "/first" and seen.body == body
    assert seen.get("content-length") == [str(len(body))]
    assert seen.get("host") == [upstream.authority]
    if b"x-private" in connection:
        assert "x-private" not in seen.names()  # what Connection may name is still dropped


@pytest.mark.parametrize("which", LISTENERS)
def test_the_next_client_on_the_pooled_connection_gets_its_own_response(proxy, upstream, which):
    body = smuggled(upstream)
    first = (b"POST /first HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: content-length\r\n\r\n"
             % (upstream.authority.encode(), len(body))) + body
    http1_exchange(getattr(proxy, which), first)
    second = b"GET /second HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % upstream.authority.encode()
    answers, _ = http1_exchange(getattr(proxy, which), second, until_close=True)
    assert [r.target for r in upstream.requests] == ["/first", "/second"]
    assert len({r.connection for r in upstream.requests}) == 1  # it was the pooled connection
    assert [(a.status, a.body) for a in answers] == [(200, b"ok 1")]


@pytest.mark.parametrize("which", LISTENERS)
@pytest.mark.parametrize("connection", [b"Connection: transfer-encoding", b"Connection: Transfer-Encoding, close"])
def test_transfer_encoding_named_in_connection_still_frames_the_body(proxy, upstream, which, connection):
    body = smuggled(upstream)
    request = (b"POST /first HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n%s\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
               % (upstream.authority.encode(), connection, len(body), body))
    answers, _ = http1_exchange(getattr(proxy, which), request)
    assert [a.status for a in answers] == [200]
    (seen,) = upstream.requests
    assert seen.body == body
    assert seen.get("transfer-encoding") == ["chunked"] or seen.get("content-length") == [str(len(body))]


@pytest.mark.parametrize("which", LISTENERS)
@pytest.mark.parametrize("connection", [b"Connection: host", b"Connection: HOST, keep-alive"])
def test_host_named_in_connection_still_reaches_the_upstream(proxy, upstream, which, connection):
    request = b"GET /h HTTP/1.1\r\nHost: %s\r\n%s\r\n\r\n" % (upstream.authority.encode(), connection)
    answers, _ = http1_exchange(getattr(proxy, which), request)
    assert [a.status for a in answers] == [200]
    (seen,) = upstream.requests
    assert seen.get("host") == [upstream.authority]


def test_an_http10_absolute_form_request_gets_a_host_upstream(proxy, upstream):
    request = b"GET http://%s/abs HTTP/1.0\r\nConnection: host\r\n\r\n" % upstream.authority.encode()
    answers, _ = http1_exchange(proxy.outbound, request, until_close=True)
    assert [a.status for a in answers] == [200]
    (seen,) = upstream.requests
    assert seen.target == "/abs" and seen.get("host") == [upstream.authority]


@pytest.fixture
def hostile(loop_thread):
    """An upstream whose response names Content-Length in Connection and smuggles a second response."""
    reply = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhello"
             b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
    u = loop_thread.run(ScriptedUpstream(reply).start())
    yield u
    loop_thread.run(u.stop())


@pytest.mark.parametrize("which", LISTENERS)
def test_a_response_naming_content_length_in_connection_keeps_its_framing(proxy, hostile, which):
    for n in range(2):  # the second request would get the smuggled response on a desynchronised pool
        request = b"GET /r%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (n, hostile.authority.encode())
        answers, rest = http1_exchange(getattr(proxy, which), request, linger=0.2)
        assert [(a.status, a.get("content-length"), a.body) for a in answers] == [(200, "5", b"hello")], n
        assert b"evil" not in rest


@pytest.mark.parametrize("field", [(b"connection", b"content-length"), (b"transfer-encoding", b"chunked"),
                                   (b"keep-alive", b"timeout=5"), (b"proxy-connection", b"keep-alive")])
def test_http2_connection_specific_fields_are_malformed(proxy, h2_upstream, field):
    """RFC 9113 section 8.2.2: the request is refused with a stream error and never forwarded."""
    with H2Client(proxy.outbound, validate=False) as c:
        sid = c.request([(b":method", b"POST"), (b":path", b"/x"), (b":scheme", b"http"),
                         (b":authority", h2_upstream.authority.encode()), field], body=b"abc")
        assert c.answer(sid, timeout=2) is None  # reset
        ok = c.request([(":method", "GET"), (":path", "/after"), (":scheme", "http"),
                        (":authority", h2_upstream.authority)])
        assert c.answer(ok).status == 200  # the connection goes on
    assert [r.target for r in h2_upstream.requests] == ["/after"]


def test_an_http10_request_without_host_to_a_redirected_address_gets_one_upstream(loop_thread, upstream, monkeypatch):
    """HTTP/1.0 needs no Host, but it goes upstream as HTTP/1.1, which does: the proxy sets the address
    the connection was redirected to (iptables' original destination, here stood in for in process)."""
    import asyncio
    import contextlib

    from meshctl_proxy import config
    from meshctl_proxy.transport import server

    monkeypatch.setattr(server, "original_dst", lambda sock: ("127.0.0.1", upstream.port))
    cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0"})

    async def start():
        p = server.Proxy(cfg)
        await p.start()
        return p

    async def stop(p):
        p.begin_shutdown()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(p.stopped.wait(), 5)
        for task in list(p.tasks):
            task.cancel()

    p = loop_thread.run(start())
    try:
        for which in ("outbound", "inbound"):
            answers, _ = http1_exchange(p.addresses[which], b"GET /old HTTP/1.0\r\nConnection: host\r\n\r\n",
                                        until_close=True)
            assert [a.status for a in answers] == [200], which
    finally:
        loop_thread.run(stop(p))
    assert [(r.target, r.get("host")) for r in upstream.requests] == [("/old", [upstream.authority])] * 2
