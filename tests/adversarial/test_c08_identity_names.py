"""Class 8: names that are not identities (docs/security.md).

A client certificate chained to the mesh's anchors whose one DNS SAN is a
wildcard or ends in a dot used to be taken as an identity, and ``*.…``
reached the application in ``meshctl-client-id``.  Like Linkerd's
``identity::Name::from_str`` such a SAN gives no identity: the connection is
served as an unauthenticated one (the chain is still valid), nothing is put
in the identity header, and a policy that requires identity refuses it.
Checked over HTTP/1 and HTTP/2 inside the mesh TLS, at the upstream.
"""

from __future__ import annotations

import pytest

from meshctl_proxy.identity.tls_contexts import parse_identity_name

from .peers import H2Client, tls_http1_exchange

GOOD = "good.adv.serviceaccount.identity.meshctl.cluster.local"


@pytest.mark.parametrize("name", [
    GOOD, "a", "a-b.c", "under_score.adv.serviceaccount.identity.meshctl.cluster.local", "A.Upper.Case",
    "x" * 63 + ".local", "1.2.3.example",
])
def test_names_that_are_identities(name):
    assert parse_identity_name(name) == name


@pytest.mark.parametrize("name", [
    "*.adv.serviceaccount.identity.meshctl.cluster.local",  # wildcard: a pattern, not a name
    "*", "good*.adv.example", "g*d.adv.example",
    GOOD + ".",  # absolute: Linkerd refuses the trailing dot ("SNI hostnames are implicitly absolute")
    ".", "", ".good.example", "good..example",  # empty labels
    "x" * 64 + ".local",  # a label over 63 octets (RFC 1035 section 2.3.4)
    ("a" * 60 + ".") * 5 + "local",  # 310 octets: over 253
    "-good.example", "good-.example",  # hyphen at a label's edge
    "127.0.0.1", "1.2.3.4",  # an IPv4 address is not a DNS name
    "good example", "good/example", "good@example", "caf\u00e9.example", "good\x00.example",
])
def test_names_that_are_not(name):
    assert parse_identity_name(name) is None


def request(upstream, *, extra: str = "") -> bytes:
    return (f"GET /who HTTP/1.1\r\nHost: {upstream.authority}\r\n{extra}Connection: close\r\n\r\n").encode()


@pytest.mark.parametrize("san", [
    "*.adv.serviceaccount.identity.meshctl.cluster.local",
    GOOD + ".",
    "*",
])
def test_a_wildcard_or_absolute_san_gives_no_identity_over_http1(mesh, meshed_proxy, upstream, san):
    ctx = mesh.client_context(san)
    raw, server_id = tls_http1_exchange(meshed_proxy.inbound, ctx, meshed_proxy.identity, request(upstream))
    assert server_id == meshed_proxy.identity
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    (seen,) = upstream.requests
    assert "meshctl-client-id" not in seen.names()
    assert not any(v.startswith("*") or v.endswith(".") for _, v in seen.headers if "client" in _.lower())


def test_a_good_san_is_the_identity_the_upstream_sees(mesh, meshed_proxy, upstream):
    ctx = mesh.client_context(GOOD)
    raw, _ = tls_http1_exchange(meshed_proxy.inbound, ctx, meshed_proxy.identity, request(upstream))
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    (seen,) = upstream.requests
    assert seen.get("meshctl-client-id") == [GOOD]


@pytest.mark.parametrize("san, expected", [
    ("*.adv.serviceaccount.identity.meshctl.cluster.local", []),
    (GOOD + ".", []),
    (GOOD, [GOOD]),
])
def test_the_same_over_http2(mesh, meshed_proxy, h2_upstream, san, expected):
    ctx = mesh.client_context(san, alpn=("h2",))
    with H2Client(meshed_proxy.inbound, ssl_context=ctx, server_name=meshed_proxy.identity) as c:
        sid = c.request([(":method", "GET"), (":path", "/who"), (":scheme", "http"),
                         (":authority", h2_upstream.authority)])
        answer = c.answer(sid)
    assert answer is not None and answer.status == 200
    (seen,) = h2_upstream.requests
    assert seen.get("meshctl-client-id") == expected


def test_a_policy_requiring_identity_refuses_a_wildcard_san(mesh, start_proxy, upstream):
    from .peers import wait_until

    p = start_proxy(**mesh.proxy_env("strict"), MESHCTL_PROXY_DEFAULT_INBOUND_POLICY="all-authenticated")
    assert wait_until(lambda: p.admin_get("/ready")[0] == 200, timeout=15)
    server = mesh.identity("strict")
    raw, _ = tls_http1_exchange(p.inbound, mesh.client_context("*.adv.serviceaccount.identity.meshctl.cluster.local"),
                                server, request(upstream))
    assert raw.startswith(b"HTTP/1.1 403"), raw[:200]
    raw, _ = tls_http1_exchange(p.inbound, mesh.client_context(GOOD), server, request(upstream))
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert [r.get("meshctl-client-id") for r in upstream.requests] == [[GOOD]]
