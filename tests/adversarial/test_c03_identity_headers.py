"""Class 3: identity headers in other spellings (docs/security.md).

Only the exact ``meshctl-client-id`` used to be stripped on the inbound side;
Linkerd's ``l5d-client-id`` and the underscore forms (which CGI/WSGI
frameworks read as the same variable) reached the application.  Now every
name an application could take for the proxy's word is removed from inbound
requests, over HTTP/1 and HTTP/2, plaintext or mesh TLS, and
``meshctl-client-id`` is set only from a verified peer.
"""

from __future__ import annotations

import pytest

from meshctl_proxy.wire.identity_headers import is_identity_header, strip_identity_headers

from .peers import H2Client, http1_exchange, tls_http1_exchange

FORGED = [
    "meshctl-client-id", "MESHCTL-CLIENT-ID", "Meshctl-Client-Id", "meshctl_client_id", "MESHCTL_CLIENT_ID",
    "meshctl-client_id", "l5d-client-id", "L5D-Client-Id", "l5d_client_id", "L5D_CLIENT_ID",
    "x-forwarded-client-cert", "X-Forwarded-Client-Cert", "x_forwarded_client_cert",
]
INNOCENT = ["client-id", "x-meshctl-client-id", "l5d-client-idx", "l5d-dst-override", "meshctl-client-ids"]
HTTP2_FORGED = [n for n in FORGED if n == n.lower()]
WHO = "good.adv.serviceaccount.identity.meshctl.cluster.local"


@pytest.mark.parametrize("name", FORGED)
def test_every_spelling_is_an_identity_claim(name):
    assert is_identity_header(name.encode())


@pytest.mark.parametrize("name", INNOCENT)
def test_other_names_are_not(name):
    assert not is_identity_header(name.encode())


def test_strip_keeps_the_rest_in_order_and_sets_the_verified_identity():
    headers = [(b"a", b"1"), (b"L5D_Client_Id", b"forged"), (b"b", b"2"), (b"meshctl-client-id", b"forged")]
    assert strip_identity_headers(headers, WHO) == [(b"a", b"1"), (b"b", b"2"), (b"meshctl-client-id", WHO.encode())]
    assert strip_identity_headers(tuple(headers), None) == [(b"a", b"1"), (b"b", b"2")]
    clean = [(b"a", b"1")]
    assert strip_identity_headers(clean, None) is clean  # nothing to do: no copy


def forged_head(upstream, names) -> bytes:
    lines = b"".join(b"%s: forged\r\n" % n.encode() for n in names)
    innocent = b"".join(b"%s: kept\r\n" % n.encode() for n in INNOCENT)
    return b"GET /who HTTP/1.1\r\nHost: %s\r\n%s%sConnection: close\r\n\r\n" % (upstream.authority.encode(), lines,
                                                                                 innocent)


def test_plaintext_http1_inbound_strips_every_spelling(proxy, upstream):
    answers, _ = http1_exchange(proxy.inbound, forged_head(upstream, FORGED), until_close=True)
    assert [a.status for a in answers] == [200]
    (seen,) = upstream.requests
    assert not any(is_identity_header(k.encode()) for k, _ in seen.headers), seen.headers
    assert all(seen.get(n) == ["kept"] for n in INNOCENT)


def test_plaintext_http2_inbound_strips_every_spelling(proxy, h2_upstream):
    with H2Client(proxy.inbound) as c:
        sid = c.request([(":method", "GET"), (":path", "/who"), (":scheme", "http"),
                         (":authority", h2_upstream.authority), *[(n, "forged") for n in HTTP2_FORGED],
                         *[(n, "kept") for n in INNOCENT]])
        assert c.answer(sid).status == 200
    (seen,) = h2_upstream.requests
    assert not any(is_identity_header(k.encode()) for k, _ in seen.headers), seen.headers
    assert all(seen.get(n) == ["kept"] for n in INNOCENT)


def test_mesh_tls_http1_sets_only_the_verified_identity(mesh, meshed_proxy, upstream):
    raw, _ = tls_http1_exchange(meshed_proxy.inbound, mesh.client_context(WHO), meshed_proxy.identity,
                                forged_head(upstream, FORGED))
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    (seen,) = upstream.requests
    claims = [(k, v) for k, v in seen.headers if is_identity_header(k.encode())]
    assert claims == [("meshctl-client-id", WHO)]


def test_mesh_tls_http2_sets_only_the_verified_identity(mesh, meshed_proxy, h2_upstream):
    ctx = mesh.client_context(WHO, alpn=("h2",))
    with H2Client(meshed_proxy.inbound, ssl_context=ctx, server_name=meshed_proxy.identity) as c:
        sid = c.request([(":method", "GET"), (":path", "/who"), (":scheme", "http"),
                         (":authority", h2_upstream.authority), *[(n, "forged") for n in HTTP2_FORGED]])
        assert c.answer(sid).status == 200
    (seen,) = h2_upstream.requests
    assert [(k, v) for k, v in seen.headers if is_identity_header(k.encode())] == [("meshctl-client-id", WHO)]


def test_the_fast_path_strips_too(proxy, upstream):
    """Bodiless GETs on a warm connection take the HTTP/1 fast path: the same rule holds there."""
    import socket

    head = forged_head(upstream, FORGED).replace(b"Connection: close\r\n", b"")
    with socket.create_connection(proxy.inbound, timeout=5) as s:
        for _ in range(3):
            s.sendall(head)
            data = b""
            while b"ok " not in data:
                data += s.recv(65536)
    assert len(upstream.requests) == 3
    for seen in upstream.requests:
        assert not any(is_identity_header(k.encode()) for k, _ in seen.headers)
