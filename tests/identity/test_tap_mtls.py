"""With identity on, the control listener serves tap over mTLS to the tap service's identity only.

A real proxy (``Proxy`` with identity enabled in its configuration) holding a
certificate from a test CA; clients are the CLI's own (``meshctl.viz.tap``)
with real certificates: the tap identity, another mesh identity, none, and
plaintext.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from helpers_identity import anchor, issuer, leaf_files  # noqa: F401 (fixtures)
from meshctl.viz import tap as client
from meshctl_proxy import config
from meshctl_proxy.identity import tls_contexts as tls
from meshctl_proxy.transport.server import Proxy
from proxy.apps import LoopThread

WEB_ID = "web.shop.serviceaccount.identity.meshctl.cluster.local"
TAP_ID = config.TAP_SVC_NAME


@dataclasses.dataclass
class HeldCertificate:
    """The part of IdentityManager the control listener uses: ``current().server_context``."""

    server_context: object

    def current(self):
        return self


@pytest.fixture(scope="module")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def mtls_proxy(loop_thread, anchor, issuer, tmp_path):
    _, cert, key = leaf_files(tmp_path, issuer, WEB_ID, tag="web")
    anchors = tmp_path / "ca.crt"
    anchors.write_text(anchor.cert_pem)
    cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS": anchor.cert_pem,
                       "MESHCTL_PROXY_IDENTITY_LOCAL_NAME": WEB_ID})

    async def start():
        proxy = Proxy(cfg)
        await proxy.start()
        return proxy

    proxy = loop_thread.run(start())
    proxy.tap.server_identity = HeldCertificate(
        tls.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=cert, key_file=key))
    yield proxy, str(anchors)
    for server in proxy.servers.values():
        server.close()


def creds_for(tmp_path, issuer, anchors: str, name: str) -> client.TapCredentials:
    _, cert, key = leaf_files(tmp_path, issuer, name, tag=name.split(".")[0])
    return client.TapCredentials(name, cert, key, anchors)


def first_event(proxy, creds, identity=WEB_ID):
    target = client.TapTarget("shop", "deployment", "web", "web-0", proxy.addresses["control"], identity)

    async def main():
        async for ev in client.subscribe(target, client.TapQuery(), creds):
            return ev

    return asyncio.run(main())


def test_the_tap_identity_subscribes_over_mtls(mtls_proxy, tmp_path, issuer):
    proxy, anchors = mtls_proxy
    hello = first_event(proxy, creds_for(tmp_path, issuer, anchors, TAP_ID))
    assert hello["event"] == "hello"


def test_another_mesh_identity_is_refused_by_name(mtls_proxy, tmp_path, issuer):
    proxy, anchors = mtls_proxy
    other = "web.shop.serviceaccount.identity.meshctl.cluster.local"
    with pytest.raises(client.TapError, match=f"refused tap: 403 client identity {other} is not the tap "
                                              f"service's {TAP_ID}"):
        first_event(proxy, creds_for(tmp_path, issuer, anchors, other))
    assert proxy.tap.hub.refused == {"forbidden": 1}


def test_plaintext_is_refused_even_from_loopback(mtls_proxy):
    proxy, _ = mtls_proxy
    with pytest.raises(client.TapError, match="403 tap requires mTLS"):
        first_event(proxy, None)


def test_a_client_without_a_certificate_fails_the_handshake(mtls_proxy, anchor):
    proxy, _ = mtls_proxy
    ctx = tls.client_context(trust_anchors_pem=anchor.cert_pem, alpn=("http/1.1",))
    with socket.create_connection(proxy.addresses["control"], timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=WEB_ID) as s:
            s.sendall(b"POST /tap HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            with pytest.raises((OSError, ConnectionError)):
                # TLS 1.3: the server's verdict on our (missing) certificate arrives after our first flight.
                if not s.recv(100):
                    raise ConnectionResetError("closed")
    assert proxy.tap.hub.subscribers == []


def test_the_client_checks_the_proxys_identity(mtls_proxy, tmp_path, issuer):
    proxy, anchors = mtls_proxy
    with pytest.raises(client.TapError, match="peer identity is .*web.shop.*expected 'db.shop"):
        first_event(proxy, creds_for(tmp_path, issuer, anchors, TAP_ID),
                    identity="db.shop.serviceaccount.identity.meshctl.cluster.local")
