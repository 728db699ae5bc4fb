"""Terminating mesh TLS after detection already read the ClientHello (real sockets on loopback)."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from helpers_identity import anchor, issuer, leaf_files  # noqa: F401 (fixtures)
from meshctl_proxy import tls
from meshctl_proxy.tls_stream import TlsServerTransport

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
        hello = tls.parse_client_hello(self.buf)
        if isinstance(hello, tls.NeedMore):
            return
        assert isinstance(hello, tls.ClientHello) and hello.server_name == SERVER
        self.transport.pause_reading()
        self.task = asyncio.ensure_future(self._terminate(self.buf))

    async def _terminate(self, prefix):
        t = TlsServerTransport(self.transport, self.server_ctx)
        self.transport.resume_reading()
        try:
            sslobj = await t.handshake(prefix, timeout=5)
        except (ssl.SSLError, ConnectionError) as exc:
            self.seen.append(("refused", type(exc).__name__))
            return
        self.seen.append(("client", tls.peer_identity(sslobj)))
        t.start(Echo())


async def _serve(server_ctx, seen):
    protocols = []

    def factory():
        protocols.append(Detecting(server_ctx, seen))
        return protocols[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, protocols


def test_terminated_session_echoes_a_megabyte_and_names_the_client(tmp_path, anchor, issuer):
    _, s_cert, s_key = leaf_files(tmp_path, issuer, SERVER, tag="s")
    _, c_cert, c_key = leaf_files(tmp_path, issuer, CLIENT, tag="c")
    server_ctx = tls.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=s_cert, key_file=s_key)
    client_ctx = tls.client_context(trust_anchors_pem=anchor.cert_pem, cert_file=c_cert, key_file=c_key)
    seen = []

    async def main():
        server, protocols = await _serve(server_ctx, seen)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=SERVER)
        tls.verify_peer_identity(writer.get_extra_info("ssl_object"), SERVER)
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
    server_ctx = tls.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=s_cert, key_file=s_key)
    anonymous = tls.client_context(trust_anchors_pem=anchor.cert_pem)  # no client certificate
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
