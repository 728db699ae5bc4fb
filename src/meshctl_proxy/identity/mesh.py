"""mTLS in the proxy: the two places it plugs in (docs/proxy.md "Seams").

- Outbound, :class:`MeshConnector` wraps the plain ``Connector``: to an
  endpoint that carries an expected identity (the destination service marks
  it meshed), it originates TLS 1.3 with our certificate, sends that
  identity as SNI (the mesh marker) and checks the server's SAN equals it.
  Connections are pooled by the proxy's pools, so the handshake is rare.
- Inbound, :class:`InboundTls` is the proxy's ``tls_acceptor``: detection
  asks it about a connection that starts with a TLS ClientHello; SNI equal
  to our identity means mesh TLS, which it terminates (client certificate
  required and verified) reporting the client's identity; anything else is
  not ours (the app's own TLS) and is forwarded as opaque TCP.
- :class:`Mesh` wires it all into one proxy (``meshctl_proxy.transport.server.serve``),
  with the inbound policy's router
  (:class:`~meshctl_proxy.policy.authorizing_router.AuthorizingRouter`) around the inbound router.

Without a valid certificate (not issued yet, or expired) both fail closed:
no mesh TLS is originated or accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable

from meshctl_proxy.identity import tls_contexts
from meshctl_proxy.identity.certificates import IdentityManager
from meshctl_proxy.identity import tls_transport
from meshctl_proxy.identity.tls_transport import TlsTransport

HANDSHAKE_TIMEOUT = 10.0


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

    @staticmethod
    def mesh_identity(endpoint) -> str | None:
        """The identity an endpoint must prove: set by discovery for meshed endpoints only."""
        if getattr(endpoint, "meshed", True) is False:
            return None
        return getattr(endpoint, "identity", None) or None

    async def connect(self, endpoint, protocol_factory: Callable[[], asyncio.Protocol], *,
                      alpn: list[str] | None = None) -> tuple[asyncio.Transport, asyncio.Protocol]:
        expected = self.mesh_identity(endpoint)
        if not expected:
            return await self.inner.connect(endpoint, protocol_factory, alpn=alpn)
        creds = self.identity.current()
        if creds is None:
            self.refused += 1
            raise NoIdentity(f"no valid certificate of our own: not originating mTLS to {expected}")
        try:
            # Our MemoryBIO transport rather than the loop's ssl=: cheaper per record (tls_stream).
            transport, protocol = await tls_transport.connect(
                protocol_factory, endpoint.host, endpoint.port, creds.client_context(alpn),
                server_hostname=expected, handshake_timeout=self.handshake_timeout)
        except (ssl.SSLError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            # A server that does not answer to our SNI (not meshed, or not who we expect) ends
            # the handshake; connect errors (refused, unreachable) are not counted here.
            self.refused += 1
            raise
        try:
            tls_contexts.verify_peer_identity(transport.get_extra_info("ssl_object"), expected)
        except tls_contexts.IdentityMismatch:
            self.refused += 1
            transport.abort()
            raise
        self.handshakes += 1
        self.identity.watch(transport)
        return transport, protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Terminated:
    transport: TlsTransport
    client_identity: str | None
    alpn: str | None


class InboundTls:
    """Inbound mesh TLS: recognise it by SNI, terminate it, name the client."""

    def __init__(self, identity: IdentityManager, *, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.identity = identity
        self.handshake_timeout = handshake_timeout
        self.handshakes = 0
        self.failed = 0

    def classify(self, prefix: bytes) -> tls_contexts.ClientHello | tls_contexts.NeedMore | tls_contexts.NotTls:
        """Sans-IO: is this the start of mesh TLS for us?  ``ClientHello`` with our name means yes."""
        return tls_contexts.parse_client_hello(prefix)

    def is_mesh(self, hello: tls_contexts.ClientHello) -> bool:
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
        tls_transport = TlsTransport(creds.server_context, server_side=True, raw=transport)
        transport.resume_reading()  # detection paused it; the handshake needs the client's next flight
        try:
            sslobj = await tls_transport.handshake(prefix, timeout=self.handshake_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            self.failed += 1
            raise
        client = tls_contexts.peer_identity(sslobj)
        self.handshakes += 1
        self.identity.watch(tls_transport)
        return Terminated(tls_transport, client, sslobj.selected_alpn_protocol())


# --- wiring -------------------------------------------------------------------------------

def identity_enabled(cfg) -> bool:
    """mTLS is on unless disabled, and needs the trust anchors (inject always sets them)."""
    return not cfg.identity_disabled and bool(cfg.identity_trust_anchors.strip())


class Mesh:
    """What identity adds to one proxy: its seams before start, its hooks after."""

    def __init__(self, cfg, identity: IdentityManager | None) -> None:
        from meshctl_proxy.policy.authorization import AuthzStats, InboundPolicy

        self.identity = identity
        self.policy = InboundPolicy.from_config(cfg)
        self.authz = AuthzStats()
        self.connector: MeshConnector | None = None
        self.inbound: InboundTls | None = None

    @classmethod
    def from_config(cls, cfg) -> "Mesh":
        from meshctl_proxy.config import ConfigError
        from meshctl_proxy.identity.certificates import IdentitySettings

        if not identity_enabled(cfg):
            return cls(cfg, None)
        try:
            return cls(cfg, IdentityManager(IdentitySettings.from_config(cfg)))
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from None

    def seams(self) -> dict:
        if self.identity is None:
            return {}
        from meshctl_proxy.policy.router import TcpConnector

        self.connector = MeshConnector(TcpConnector(), self.identity)
        self.inbound = InboundTls(self.identity)
        return {"connector": self.connector, "tls_acceptor": self.inbound}

    def attach(self, proxy) -> None:
        from meshctl_proxy.model import INBOUND
        from meshctl_proxy.policy.authorizing_router import AuthorizingRouter

        proxy.routers[INBOUND] = AuthorizingRouter(proxy.routers[INBOUND], self.policy, self.authz)
        self.authz.series = proxy.metrics.series  # ports come from the network: one cap for every family
        proxy.metrics.extra_renderers.append(self.render_metrics)
        if self.identity is None:
            return
        proxy.tap.server_identity = self.identity  # the control listener's mTLS (meshctl_proxy.telemetry.tap)
        proxy.spawn(self.identity.run())
        proxy.readiness.append(self.identity.is_ready)
        proxy.admin_routes[b"/identity"] = self._identity_route

    def _identity_route(self) -> tuple[int, bytes, bytes]:
        creds = self.identity.current() if self.identity else None
        if creds is None:
            return 503, b"text/plain; charset=utf-8", b"no valid certificate\n"
        return 200, b"application/x-pem-file", creds.chain_pem.encode()

    def render_metrics(self) -> str:
        out = [self.authz.render()]
        ident = self.identity
        if ident is not None:
            # Linkerd's names for the proxy's own certificate.
            out.append("# HELP identity_cert_expiration_timestamp_seconds Time when this proxy's current mTLS "
                       "certificate expires (seconds since the epoch).\n"
                       "# TYPE identity_cert_expiration_timestamp_seconds gauge\n"
                       f"identity_cert_expiration_timestamp_seconds {ident.expiry or 0:.0f}\n"
                       "# HELP identity_cert_refresh_count Certificates obtained from the identity service.\n"
                       "# TYPE identity_cert_refresh_count counter\n"
                       f"identity_cert_refresh_count {ident.refreshes}\n")
            if self.connector is not None and self.inbound is not None:
                out.append("# HELP tls_handshakes_total Completed mTLS handshakes (outbound originated, inbound "
                           "terminated).\n# TYPE tls_handshakes_total counter\n"
                           f'tls_handshakes_total{{direction="outbound"}} {self.connector.handshakes}\n'
                           f'tls_handshakes_total{{direction="inbound"}} {self.inbound.handshakes}\n'
                           "# HELP tls_handshake_failures_total Refused or failed mTLS handshakes.\n"
                           "# TYPE tls_handshake_failures_total counter\n"
                           f'tls_handshake_failures_total{{direction="outbound"}} {self.connector.refused}\n'
                           f'tls_handshake_failures_total{{direction="inbound"}} {self.inbound.failed}\n')
        return "".join(out)
