"""mTLS in the proxy: the two places it plugs in (docs/proxy.md "Seams").

- Outbound, :class:`MeshConnector` wraps the plain ``Connector``: to an
  endpoint that carries an expected identity (the destination service marks
  it meshed), it originates TLS 1.3 with our certificate, sends that
  identity as SNI (the mesh marker) and checks the server's SAN equals it.
  Connections are pooled by the proxy's pools, so the handshake is rare.
- Inbound, :class:`InboundTls` decides on a connection that starts with a
  TLS ClientHello: SNI equal to our identity means mesh TLS, which it
  terminates (client certificate required and verified) and reports the
  client's identity; anything else is not ours (the app's own TLS) and is
  left to opaque forwarding.

Without a valid certificate (not issued yet, or expired) both fail closed:
no mesh TLS is originated or accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable

from meshctl_proxy import tls
from meshctl_proxy.identity import IdentityManager
from meshctl_proxy.tls_stream import TlsServerTransport

HANDSHAKE_TIMEOUT = 10.0
IDENTITY_HEADER = b"meshctl-client-id"  # as Linkerd's l5d-client-id


class NoIdentity(ConnectionError):
    """We hold no valid certificate, so mesh TLS cannot be originated (fail closed)."""


class MeshConnector:
    """A Connector that speaks mTLS to endpoints with an expected identity, plain TCP to the rest."""

    def __init__(self, inner, identity: IdentityManager, *, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.inner = inner
        self.identity = identity
        self.handshake_timeout = handshake_timeout
        self.handshakes = 0
        self.refused = 0

    async def connect(self, endpoint, protocol_factory: Callable[[], asyncio.Protocol], *,
                      alpn: list[str] | None = None) -> tuple[asyncio.Transport, asyncio.Protocol]:
        expected = getattr(endpoint, "identity", None)
        if not expected:
            return await self.inner.connect(endpoint, protocol_factory, alpn=alpn)
        creds = self.identity.current()
        if creds is None:
            self.refused += 1
            raise NoIdentity(f"no valid certificate of our own: not originating mTLS to {expected}")
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(
            protocol_factory, endpoint.host, endpoint.port, ssl=creds.client_context(alpn),
            server_hostname=expected, ssl_handshake_timeout=self.handshake_timeout)
        try:
            tls.verify_peer_identity(transport.get_extra_info("ssl_object"), expected)
        except tls.IdentityMismatch:
            self.refused += 1
            transport.abort()
            raise
        self.handshakes += 1
        self.identity.watch(transport)
        return transport, protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Terminated:
    transport: TlsServerTransport
    client_identity: str | None
    alpn: str | None


class InboundTls:
    """Inbound mesh TLS: recognise it by SNI, terminate it, name the client."""

    def __init__(self, identity: IdentityManager, *, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.identity = identity
        self.handshake_timeout = handshake_timeout
        self.handshakes = 0
        self.failed = 0

    def classify(self, prefix: bytes) -> tls.ClientHello | tls.NeedMore | tls.NotTls:
        """Sans-IO: is this the start of mesh TLS for us?  ``ClientHello`` with our name means yes."""
        return tls.parse_client_hello(prefix)

    def is_mesh(self, hello: tls.ClientHello) -> bool:
        return hello.server_name == self.identity.name

    async def terminate(self, transport: asyncio.Transport, prefix: bytes) -> Terminated:
        """Handshake on an accepted connection whose first bytes (*prefix*) were already read.

        Raises NoIdentity (we have no valid certificate: fail closed) or
        ssl.SSLError / ConnectionError when the client is not acceptable.
        The caller then ``start()``s its protocol on ``Terminated.transport``.
        """
        creds = self.identity.current()
        if creds is None:
            self.failed += 1
            transport.abort()
            raise NoIdentity("no valid certificate of our own: refusing mesh TLS")
        tls_transport = TlsServerTransport(transport, creds.server_context)
        try:
            sslobj = await tls_transport.handshake(prefix, timeout=self.handshake_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            self.failed += 1
            raise
        client = tls.peer_identity(sslobj)
        self.handshakes += 1
        self.identity.watch(tls_transport)
        return Terminated(tls_transport, client, sslobj.selected_alpn_protocol())


def strip_identity_header(headers: list[tuple[bytes, bytes]], client_identity: str | None) -> list[tuple[bytes, bytes]]:
    """Drop any client-sent ``meshctl-client-id`` and set it only from the verified peer.

    A plaintext client could otherwise claim any identity to the application.
    """
    out = [(k, v) for k, v in headers if k.lower() != IDENTITY_HEADER]
    if client_identity:
        out.append((IDENTITY_HEADER, client_identity.encode()))
    return out
