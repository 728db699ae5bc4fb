"""Opaque TCP and protocol detection, on a Proxy run in-process with a router seam pointing at an echo server.

On loopback there is no SO_ORIGINAL_DST, so the router decides where TCP goes:
this also checks that the router seam is the one place that decides it.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshctl_proxy import config
from meshctl_proxy.wire.detect import H1, H2, H2_PREFACE, TCP, TLS, detect
from meshctl_proxy.model import Endpoint
from meshctl_proxy.policy.router import DirectRouter
from meshctl_proxy.transport.server import Proxy


@pytest.mark.parametrize("buf,kind", [
    (b"", None), (b"G", None), (b"GET", None), (b"GET ", H1), (b"POST /x HTTP/1.1\r\n", H1),
    (H2_PREFACE[:10], None), (H2_PREFACE, H2), (b"\x16\x03\x01\x02\x00", TLS), (b"\x16", None),
    (b"SSH-2.0-OpenSSH_9.2\r\n", TCP), (b"\x00\x01binary", TCP), (b"get / HTTP/1.1", TCP), (b"A" * 30, TCP),
])
def test_detect(buf, kind):
    assert detect(buf) == kind


class FixedRouter(DirectRouter):
    def __init__(self, endpoint):
        super().__init__()
        self.endpoint = endpoint
        self.seen = []

    def select(self, target):
        self.seen.append(target)
        return self.endpoint


async def echo_server():
    async def handle(reader, writer):
        data = await reader.read()  # until the client half-closes
        writer.write(b"got:" + data)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def run_proxy(loop_thread, router, **env):
    base = {"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
            "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0"}
    base.update(env)
    proxy = Proxy(config.load(base), outbound_router=router)
    loop_thread.run(proxy.start())
    return proxy


def test_opaque_tcp_with_half_close(loop_thread):
    server = loop_thread.run(echo_server())
    port = server.sockets[0].getsockname()[1]
    router = FixedRouter(Endpoint("127.0.0.1", port))
    proxy = run_proxy(loop_thread, router, MESHCTL_PROXY_DETECT_TIMEOUT="5s")
    try:
        with socket.create_connection(proxy.addresses["outbound"], timeout=5) as s:
            s.sendall(b"\x00\x01 not http at all")
            s.shutdown(socket.SHUT_WR)  # half-close: the reply must still come back
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        assert reply == b"got:\x00\x01 not http at all"
        assert router.seen[0].protocol == TCP
        m = proxy.metrics
        src = m.tcp("outbound", "src", None, None, "no_identity")
        assert src.read_bytes == len(b"\x00\x01 not http at all") and src.write_bytes == len(reply)
    finally:
        loop_thread.run(_stop(proxy))
        server.close()


def test_detection_timeout_falls_back_to_tcp(loop_thread):
    """A server-speaks-first client sends nothing: after the timeout the bytes flow as TCP."""
    async def greeter():
        async def handle(reader, writer):
            writer.write(b"220 hello\r\n")
            await writer.drain()
            writer.write(b"echo " + await reader.readline())
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    server = loop_thread.run(greeter())
    router = FixedRouter(Endpoint("127.0.0.1", server.sockets[0].getsockname()[1]))
    proxy = run_proxy(loop_thread, router, MESHCTL_PROXY_DETECT_TIMEOUT="200ms")
    try:
        with socket.create_connection(proxy.addresses["outbound"], timeout=5) as s:
            assert s.recv(100) == b"220 hello\r\n"
            s.sendall(b"HELO x\r\n")
            assert s.recv(100) == b"echo HELO x\r\n"
    finally:
        loop_thread.run(_stop(proxy))
        server.close()


async def _stop(proxy):
    proxy.begin_shutdown()
    await asyncio.wait_for(proxy.stopped.wait(), 10)
