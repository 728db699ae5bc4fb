"""Mesh TLS on real loopback sockets: who is accepted, who is refused, and ClientHello detection."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest

from helpers_identity import anchor, issuer, leaf_files  # noqa: F401 (fixtures)
from meshctl.identity import certs
from meshctl_proxy.identity import tls_contexts
SERVER = "api.shop.serviceaccount.identity.meshctl.cluster.local"
CLIENT = "web.shop.serviceaccount.identity.meshctl.cluster.local"


def handshake(server_files, client_files, anchors_pem: str, *, expect: str = SERVER, client_anchors: str | None = None):
    """One TLS connection on loopback; returns (client-side verdict, identity the server saw)."""
    _, s_cert, s_key = server_files
    _, c_cert, c_key = client_files
    server_ctx = tls_contexts.server_context(trust_anchors_pem=anchors_pem, cert_file=s_cert, key_file=s_key)
    client_ctx = tls_contexts.client_context(trust_anchors_pem=client_anchors or anchors_pem, cert_file=c_cert, key_file=c_key)
    seen: list = []

    async def on_conn(reader, writer):
        seen.append(tls_contexts.peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=expect)
            try:
                tls_contexts.verify_peer_identity(writer.get_extra_info("ssl_object"), expect)
                assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
                return (await reader.read(), seen)
            finally:
                writer.close()
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def assert_refused_by_server(*args, **kw):
    # TLS 1.3: the client's handshake completes before the server has checked
    # its certificate; the refusal arrives as an alert or EOF on the first read.
    try:
        data, seen = handshake(*args, **kw)
    except (ssl.SSLError, ConnectionError):
        return
    assert (data, seen) == (b"", []), "the server talked to a client it cannot verify"


@pytest.fixture
def good(tmp_path, issuer):
    return (leaf_files(tmp_path, issuer, SERVER, tag="server"), leaf_files(tmp_path, issuer, CLIENT, tag="client"))


def test_mutual_tls_names_both_peers(good, anchor):
    data, seen = handshake(*good, anchor.cert_pem)
    assert data == b"hi" and seen == [CLIENT]


def test_server_with_wrong_name_is_refused_by_the_identity_check(tmp_path, issuer, anchor, good):
    impostor = leaf_files(tmp_path, issuer, "db.shop.serviceaccount.identity.meshctl.cluster.local", tag="impostor")
    with pytest.raises(tls_contexts.IdentityMismatch, match="peer identity is 'db.shop"):
        handshake(impostor, good[1], anchor.cert_pem)


def test_server_from_another_ca_is_refused(tmp_path, good, anchor):
    other_anchor = certs.generate_trust_anchor()
    other = leaf_files(tmp_path, certs.generate_issuer(other_anchor), SERVER, tag="other")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        handshake(other, good[1], anchor.cert_pem + other_anchor.cert_pem, client_anchors=anchor.cert_pem)


def test_client_from_another_ca_is_refused_by_the_server(tmp_path, good, anchor):
    other_anchor = certs.generate_trust_anchor()
    other_client = leaf_files(tmp_path, certs.generate_issuer(other_anchor), CLIENT, tag="other-client")
    assert_refused_by_server(good[0], other_client, anchor.cert_pem, client_anchors=anchor.cert_pem + other_anchor.cert_pem)


def test_expired_server_certificate_is_refused(tmp_path, issuer, anchor, good):
    old = leaf_files(tmp_path, issuer, SERVER, lifetime=dt.timedelta(minutes=5),
                     now=certs.utcnow() - dt.timedelta(hours=1), tag="expired")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        handshake(old, good[1], anchor.cert_pem)


def test_not_yet_valid_server_certificate_is_refused(tmp_path, issuer, anchor, good):
    future = leaf_files(tmp_path, issuer, SERVER, now=certs.utcnow() + dt.timedelta(hours=1), tag="future")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate is not yet valid"):
        handshake(future, good[1], anchor.cert_pem)


def test_expired_client_certificate_is_refused_by_the_server(tmp_path, issuer, anchor, good):
    old = leaf_files(tmp_path, issuer, CLIENT, lifetime=dt.timedelta(minutes=5),
                     now=certs.utcnow() - dt.timedelta(hours=1), tag="old-client")
    assert_refused_by_server(good[0], old, anchor.cert_pem)


def test_plaintext_client_gets_no_service_from_a_tls_listener(good, anchor):
    _, s_cert, s_key = good[0]
    ctx = tls_contexts.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=s_cert, key_file=s_key)

    async def main():
        served = []
        server = await asyncio.start_server(lambda r, w: served.append(1), "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        return data, served

    data, served = asyncio.run(main())
    assert b"HTTP" not in data and served == []


# --- ClientHello detection ----------------------------------------------------------

def real_client_hello(server_name: str | None) -> bytes:
    ctx = tls_contexts.client_context(trust_anchors_pem=certs.generate_trust_anchor().cert_pem)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_client_hello_sni_and_alpn_are_read_from_python_ssl_output():
    hello = real_client_hello(SERVER)
    assert tls_contexts.parse_client_hello(hello) == tls_contexts.ClientHello(SERVER, ("h2", "http/1.1"))
    assert tls_contexts.parse_client_hello(real_client_hello(None)) == tls_contexts.ClientHello(None, ("h2", "http/1.1"))


def test_client_hello_needs_whole_record_and_rejects_plaintext():
    hello = real_client_hello(SERVER)
    for cut in (1, 3, 5, len(hello) - 1):
        assert tls_contexts.parse_client_hello(hello[:cut]) == tls_contexts.NeedMore()
    for data in (b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n", b"\x16\x01\x00", b"\x16\x03\x01\xff\xff", b"\x16\x03\x01\x00\x04\x02abc"):
        assert tls_contexts.parse_client_hello(data) == tls_contexts.NotTls(), data
