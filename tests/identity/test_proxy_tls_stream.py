"""Terminating mesh TLS after detection already read the ClientHello (real sockets on loopback)."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from helpers_identity import anchor, issuer, leaf_files  # noqa: F401 (fixtures)
from meshctl_proxy.identity import tls_contexts
from meshctl_proxy.identity import tls_transport
from meshctl_proxy.identity.tls_transport import TlsTransport

SERVER = "api.shop.serviceaccount.identity.meshctl.cluster.local"
CLIENT = "web.shop.serviceaccount.identity.meshctl.cluster.local"


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False


class Detecting(asyncio.Protocol):
    """What the proxy's inbound side does: read until the ClientHello is whole, check SNI, terminate."""

    def __init__(self, server_ctx, seen):
        self.buf, self.server_ctx, self.seen, self.task = b"", server_ctx, seen, None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        hello = tls_contexts.parse_client_hello(self.buf)
        if isinstance(hello, tls_contexts.NeedMore):
            return
        assert isinstance(hello, tls_contexts.ClientHello) and hello.server_name == SERVER
        self.transport.pause_reading()
        self.task = asyncio.ensure_future(self._terminate(self.buf))

    async def _terminate(self, prefix):
        t = TlsTransport(self.server_ctx, server_side=True, raw=self.transport)
        self.transport.resume_reading()
        try:
            sslobj = await t.handshake(prefix, timeout=5)
        except (ssl.SSLError, ConnectionError) as exc:
            self.seen.append(("refused", type(exc).__name__))
            return
        self.seen.append(("client", tls_contexts.peer_identity(sslobj)))
        t.start(Echo())


async def _serve(server_ctx, seen):
    protocols = []

    def factory():
        protocols.append(Detecting(server_ctx, seen))
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, protocols


def _contexts(tmp_path, anchor, issuer, *, server_ca=None, alpn=tls_contexts.MESH_ALPN):
    """Server and client contexts with leaves from *issuer* (the server's from *server_ca*, a pair, if given)."""
    server_anchor, server_issuer = server_ca or (anchor, issuer)
    _, s_cert, s_key = leaf_files(tmp_path, server_issuer, SERVER, tag="s")
    _, c_cert, c_key = leaf_files(tmp_path, issuer, CLIENT, tag="c")
    server_ctx = tls_contexts.server_context(trust_anchors_pem=server_anchor.cert_pem, cert_file=s_cert, key_file=s_key)
    client_ctx = tls_contexts.client_context(trust_anchors_pem=anchor.cert_pem, cert_file=c_cert, key_file=c_key, alpn=alpn)
    return server_ctx, client_ctx


def test_terminated_session_echoes_a_megabyte_and_names_the_client(tmp_path, anchor, issuer):
    server_ctx, client_ctx = _contexts(tmp_path, anchor, issuer)
    seen = []

    async def main():
        server, protocols = await _serve(server_ctx, seen)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=SERVER)
        tls_contexts.verify_peer_identity(writer.get_extra_info("ssl_object"), SERVER)
        payload = bytes(range(256)) * 4096  # 1 MiB
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        writer.close()
        server.close()
        await asyncio.gather(*(p.task for p in protocols if p.task))
        return got == payload

    assert asyncio.run(main())
    assert seen == [("client", CLIENT)]


def test_client_without_a_mesh_certificate_is_refused_at_the_handshake(tmp_path, anchor, issuer):
    _, s_cert, s_key = leaf_files(tmp_path, issuer, SERVER, tag="s")
    server_ctx = tls_contexts.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=s_cert, key_file=s_key)
    anonymous = tls_contexts.client_context(trust_anchors_pem=anchor.cert_pem)  # no client certificate
    seen = []

    async def main():
        server, protocols = await _serve(server_ctx, seen)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=anonymous, server_hostname=SERVER)
        writer.write(b"hello")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            data = await asyncio.wait_for(reader.read(10), 5)
            assert data == b"", data
            raise ConnectionError("closed")
        writer.close()
        server.close()
        await asyncio.gather(*(p.task for p in protocols if p.task))

    asyncio.run(main())
    assert seen == [("refused", "SSLError")]


# --- originating: tls_transport.connect, what the outbound proxy uses ------------------------------

class Collect(asyncio.Protocol):
    def __init__(self):
        self.data, self.done = bytearray(), asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


def test_originated_session_echoes_through_our_termination_and_both_sides_name_the_peer(tmp_path, anchor, issuer):
    server_ctx, client_ctx = _contexts(tmp_path, anchor, issuer, alpn=("http/1.1",))
    seen = []

    async def main():
        server, protocols = await _serve(server_ctx, seen)
        port = server.sockets[0].getsockname()[1]
        transport, proto = await tls_transport.connect(Collect, "127.0.0.1", port, client_ctx, server_hostname=SERVER,
                                                    handshake_timeout=5)
        assert proto.transport is transport
        sslobj = transport.get_extra_info("ssl_object")
        assert tls_contexts.verify_peer_identity(sslobj, SERVER) == SERVER
        assert sslobj.version() == "TLSv1.3" and sslobj.selected_alpn_protocol() == "http/1.1"
        assert sslobj.cipher()[0] == "TLS_AES_256_GCM_SHA384"  # docs/performance.md: why not AES-128
        assert transport.get_extra_info("peername")[1] == port  # the raw transport answers the rest
        # many small writes (one record each), then one large one (several records per write)
        for i in range(200):
            transport.write(b"%05d;" % i)
        big = bytes(range(256)) * 2048  # 512 KiB
        transport.write(big)
        expected = b"".join(b"%05d;" % i for i in range(200)) + big
        async with asyncio.timeout(10):
            while len(proto.data) < len(expected):
                await asyncio.sleep(0.01)
        # The server sent no session tickets (tls_contexts.server_context: a proxy never resumes); the
        # echoed bytes arrived after where tickets would have been, so none can be in flight.
        assert sslobj.session is None or not sslobj.session.has_ticket
        transport.close()  # close_notify: the echo server sees EOF and closes its side
        exc = await asyncio.wait_for(proto.done, 5)
        server.close()
        await asyncio.gather(*(p.task for p in protocols if p.task))
        return bytes(proto.data) == expected, exc

    same, exc = asyncio.run(main())
    assert same
    assert exc is None
    assert seen == [("client", CLIENT)]


def test_originating_to_a_server_of_another_trust_domain_raises_ssl_error(tmp_path, anchor, issuer):
    from meshctl.identity import certs

    other_anchor = certs.generate_trust_anchor()
    server_ctx, client_ctx = _contexts(tmp_path, anchor, issuer,
                                       server_ca=(other_anchor, certs.generate_issuer(other_anchor)))
    seen = []

    async def main():
        server, protocols = await _serve(server_ctx, seen)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_transport.connect(Collect, "127.0.0.1", port, client_ctx, server_hostname=SERVER,
                                     handshake_timeout=5)
        server.close()
        await asyncio.gather(*(p.task for p in protocols if p.task))

    asyncio.run(main())
    assert seen and seen[0][0] == "refused"  # our alert reached the server


@pytest.mark.parametrize("server_behaviour", ["silent", "closes"])
def test_originating_to_a_server_that_never_answers_tls_fails_in_bounded_time(tmp_path, anchor, issuer,
                                                                              server_behaviour):
    _, c_cert, c_key = leaf_files(tmp_path, issuer, CLIENT, tag="c")
    client_ctx = tls_contexts.client_context(trust_anchors_pem=anchor.cert_pem, cert_file=c_cert, key_file=c_key)
    got_hello = []

    class NotTls(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            got_hello.append(data[:1])
            if server_behaviour == "closes":
                self.transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(NotTls, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        start = loop.time()
        # The event loop's ssl_handshake_timeout raises ConnectionAbortedError; so does ours.
        expected = ConnectionAbortedError if server_behaviour == "silent" else ConnectionResetError
        with pytest.raises(expected):
            await tls_transport.connect(Collect, "127.0.0.1", port, client_ctx, server_hostname=SERVER,
                                     handshake_timeout=0.5)
        elapsed = loop.time() - start
        server.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert got_hello == [b"\x16"]  # the ClientHello went out first
    assert elapsed < (2 if server_behaviour == "silent" else 0.4)
