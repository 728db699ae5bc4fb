"""The inbound policy at the router seam: :class:`AuthorizingRouter` wraps the inbound router.

The decision itself is :mod:`meshctl_proxy.policy.authorization` (sans-IO);
this applies it to each request (403 when denied) and to each opaque TCP
connection, and owns the ``meshctl-client-id`` header.  The mesh wiring
(:class:`meshctl_proxy.identity.mesh.Mesh`) installs it around the inbound router.
"""

from __future__ import annotations

from meshctl_proxy.wire.identity_headers import strip_identity_headers


class AuthorizingRouter:
    """Wraps the inbound router: applies the inbound policy per request and owns ``meshctl-client-id``.

    Denied requests become 403 (``ProxyError``, with the reason in
    ``meshctl-proxy-error``); allowed ones reach the application with the
    client's verified identity in ``meshctl-client-id`` and never a
    client-supplied one, in that or any other spelling an application could
    read as it (``wire.identity_headers``).  Each request is counted once in
    ``inbound_http_authz_{allow,deny}_total``: by dispatch(), or by commit()
    when the exchange took the shortcut (shortcut() itself only asks).
    """

    def __init__(self, inner, policy, stats) -> None:
        self.inner = inner
        self.policy = policy
        self.stats = stats
        # The inner router's own methods, bound once: the router seam, passed through.
        self.select = inner.select
        self.target = inner.target
        self.observe = inner.observe
        self.observes = getattr(inner, "observes", True)
        # The inner router's inbound route metrics (policy.inbound_routes): the exchange must hear about them.
        self.counts_routes = getattr(inner, "counts_routes", False)
        self.shortcut_waits_for_lookup = getattr(inner, "shortcut_waits_for_lookup", False)
        # The policy's answer depends on the connection alone (port, peer identity, address).
        self.remembers_endpoints = getattr(inner, "remembers_endpoints", False)

    def decide(self, ctx):
        port = ctx.orig_dst[1] if ctx.orig_dst else ctx.local_addr[1]
        return port, self.policy.authorize(port=port, client_identity=ctx.peer_identity, client_ip=ctx.client_addr[0])

    async def dispatch(self, request, upstream):
        from meshctl_proxy.model import ProxyError

        ctx = request.context
        port, decision = self.decide(ctx)
        self.stats.count("http", decision, port)
        if not decision.allowed:
            raise ProxyError(403, decision.reason)
        request.headers = strip_identity_headers(request.headers, ctx.peer_identity)
        return await self.inner.dispatch(request, upstream)

    def shortcut(self, request):
        """The inner router's shortcut, for allowed requests only (a denied one takes dispatch(): 403)."""
        inner = getattr(self.inner, "shortcut", None)
        endpoint = inner(request) if inner is not None else None
        if endpoint is None or not self.decide(request.context)[1].allowed:
            return None
        return endpoint

    def commit(self, request, endpoint) -> None:
        """What dispatch() does before sending: count the request, set ``meshctl-client-id``."""
        ctx = request.context
        port, decision = self.decide(ctx)
        self.stats.count("http", decision, port)
        request.headers = strip_identity_headers(request.headers, ctx.peer_identity)
        self.inner.commit(request, endpoint)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()

    def authorize_tcp(self, ctx) -> bool:
        port, decision = self.decide(ctx)
        self.stats.count("tcp", decision, port)
        return decision.allowed
