"""Class 2: ``Upgrade: h2c`` passed to the upstream (docs/security.md).

Forwarded, an h2c upgrade lets a client switch the connection to raw HTTP/2
with the upstream, past the proxy's HTTP handling (policy, identity headers,
metrics): "h2c smuggling".  Like Linkerd, the proxy removes it, with
``HTTP2-Settings``, and forwards the request as plain HTTP/1.1; the
connection stays HTTP/1.1.  Other protocols in the same Upgrade list stay.
Checked on both listeners, with bodies, and at the upstream.
"""

from __future__ import annotations

import pytest

from meshctl_proxy.wire.http1 import without_h2c

from .peers import H2Client, http1_exchange

LISTENERS = ("outbound", "inbound")
SETTINGS = b"AAMAAABkAARAAAAAAAIAAAAA"


@pytest.mark.parametrize("value, kept", [
    (b"h2c", None), (b"H2C", None), (b" h2c ", None), (b"h2c, websocket", b"websocket"),
    (b"websocket, H2c", b"websocket"), (b"websocket", b"websocket"), (b"h2c-14", b"h2c-14"),
])
def test_h2c_is_taken_out_of_an_upgrade_list(value, kept):
    assert without_h2c(value) == kept


@pytest.mark.parametrize("which", LISTENERS)
@pytest.mark.parametrize("upgrade", [b"h2c", b"H2C", b"h2c "])
def test_an_h2c_upgrade_goes_upstream_as_a_plain_request(proxy, upstream, which, upgrade):
    request = (b"GET /up HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: %s\r\n"
               b"HTTP2-Settings: %s\r\n\r\n" % (upstream.authority.encode(), upgrade, SETTINGS))
    answers, _ = http1_exchange(getattr(proxy, which), request)
    assert [a.status for a in answers] == [200]  # not 101: the client stays on HTTP/1.1
    (seen,) = upstream.requests
    assert seen.target == "/up"
    assert not {"upgrade", "http2-settings"} & seen.names()
    assert not any("upgrade" in v.lower() for v in seen.get("connection"))


@pytest.mark.parametrize("which", LISTENERS)
def test_http2_settings_alone_is_not_forwarded(proxy, upstream, which):
    request = b"GET /s HTTP/1.1\r\nHost: %s\r\nHTTP2-Settings: %s\r\n\r\n" % (upstream.authority.encode(), SETTINGS)
    answers, _ = http1_exchange(getattr(proxy, which), request)
    assert [a.status for a in answers] == [200]
    assert "http2-settings" not in upstream.requests[0].names()


@pytest.mark.parametrize("which", LISTENERS)
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_h2c_upgrade_with_a_body_keeps_its_body_and_the_next_request(proxy, upstream, which, framing):
    body = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # a body that looks like the HTTP/2 preface is just a body
    host = upstream.authority.encode()
    if framing == "length":
        head = b"POST /up HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n" % (host, len(body))
        payload = body
    else:
        head = b"POST /up HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n" % host
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    request = (head + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: %s\r\n\r\n" % SETTINGS
               + payload + b"GET /next HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)
    answers, _ = http1_exchange(getattr(proxy, which), request, until_close=True)
    assert [a.status for a in answers] == [200, 200]
    assert [(r.target, r.body) for r in upstream.requests] == [("/up", body), ("/next", b"")]
    assert "upgrade" not in upstream.requests[0].names()


@pytest.mark.parametrize("which", LISTENERS)
def test_h2c_smuggling_never_reaches_the_upstream_as_http2(proxy, upstream, which):
    """The attack: upgrade, then speak HTTP/2 at once, hoping the upstream switched."""
    request = (b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: %s\r\n\r\n" % (upstream.authority.encode(), SETTINGS))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    answers, _ = http1_exchange(getattr(proxy, which), request + preface, until_close=True)
    # The preface is a malformed HTTP/1 request to the proxy: 400 and close (with the upgrade request
    # in the same read, that one is refused with it).  Never 101, never HTTP/2 bytes upstream.
    assert answers and answers[-1].status == 400 and all(a.status != 101 for a in answers)
    assert len(upstream.requests) <= 1
    assert not any(b"PRI * HTTP/2.0" in raw for raw in upstream.raw)


@pytest.mark.parametrize("which", LISTENERS)
def test_another_protocol_in_the_list_is_still_offered(proxy, upstream, which):
    request = (b"GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n"
               % upstream.authority.encode())
    answers, _ = http1_exchange(getattr(proxy, which), request)
    assert [a.status for a in answers] == [200]  # the recording upstream declines every upgrade
    (seen,) = upstream.requests
    assert seen.get("upgrade") == ["websocket"]


def test_http2_requests_cannot_carry_upgrade(proxy, h2_upstream):
    """RFC 9113 section 8.2.2: ``upgrade`` is connection-specific, so malformed in HTTP/2."""
    with H2Client(proxy.outbound, validate=False) as c:
        sid = c.request([(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"http"),
                         (b":authority", h2_upstream.authority.encode()), (b"upgrade", b"h2c")])
        assert c.answer(sid, timeout=2) is None
    assert h2_upstream.requests == []
