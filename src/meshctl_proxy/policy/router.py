"""The two seams that later work plugs into: routing and connecting.

**Router** (one object per direction).  ``select(target)`` names the
endpoint for a connection or request, ``observe(endpoint, outcome)`` hears how
it went, and ``dispatch(request, upstream)`` is the whole per-request exchange,
"send this request upstream and get the response": balancing, route matching,
retries (with a body buffered through ``Body.read_all`` / ``Body.of``) and
timeouts (``asyncio.timeout`` around ``upstream.send``, raising
``ProxyError(504, ...)``) all fit by overriding it.  The defaults send to the
original destination, or in ingress mode (a connection that was not
redirected) to the request's Host / ``:authority``, as Linkerd's ingress mode
does.

**Connector**: ``connect(endpoint, protocol_factory, alpn=...)`` returns
``(transport, protocol)`` like ``loop.create_connection``.  The default is
plain TCP; the mTLS work wraps it (``ssl=`` with the endpoint's identity as
the expected server name).  A transport with an ``ssl_object`` extra is
reported as ``tls="true"`` in metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import Protocol

from meshctl_proxy.model import INBOUND, OUTBOUND, Endpoint, Outcome, ProxyError, Request, Response, Target


class Upstream(Protocol):
    async def send(self, request: Request, endpoint: Endpoint) -> Response: ...


class Connector(Protocol):
    async def connect(self, endpoint: Endpoint, protocol_factory: Callable[[], asyncio.Protocol], *,
                      alpn: list[str] | None = None) -> tuple[asyncio.Transport, asyncio.Protocol]: ...


class TcpConnector:
    """Plain TCP (the default Connector)."""

    async def connect(self, endpoint: Endpoint, protocol_factory: Callable[[], asyncio.Protocol], *,
                      alpn: list[str] | None = None) -> tuple[asyncio.Transport, asyncio.Protocol]:
        return await asyncio.get_running_loop().create_connection(protocol_factory, endpoint.host, endpoint.port)


def mesh_identity(connector, endpoint) -> str | None:
    """The identity *connector* will require of *endpoint* (mTLS), or None for plaintext.

    Connectors that originate TLS say so with a ``mesh_identity(endpoint)``
    method; metrics label the connection ``tls="true"``, ``server_id=...`` with it.
    """
    probe = getattr(connector, "mesh_identity", None)
    return probe(endpoint) if probe is not None else None


def http_series(metrics, ctx, authority: str, connector, endpoint: Endpoint | None):
    """The request/response series (``request_total``, ``response_total``...) a request counts in.

    Labelled as Linkerd labels them: inbound by the accepted connection (``tls``
    and the verified ``client_id``); outbound by the hop to the endpoint the
    request went to: ``tls="true"`` and ``server_id`` when this proxy
    originated mTLS to it.  A request answered before any endpoint was chosen
    (a proxy error) counts as plaintext.
    """
    target = ctx.target_addr or authority
    if ctx.direction == OUTBOUND:
        server_id = mesh_identity(connector, endpoint) if endpoint is not None else None
        return metrics.http(OUTBOUND, authority, target, "true" if server_id else "no_identity", server_id)
    return metrics.http(ctx.direction, authority, target, ctx.tls, ctx.peer_identity)


async def open_connection(connector: Connector, endpoint: Endpoint, protocol_factory, *, timeout: float,
                          alpn: list[str] | None = None) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Connect through *connector*; failures become the proxy errors clients see (502, 504)."""
    try:
        async with asyncio.timeout(timeout):
            return await connector.connect(endpoint, protocol_factory, alpn=alpn)
    except TimeoutError:
        raise ProxyError(504, f"connect to {endpoint.addr} timed out") from None
    except OSError as exc:
        raise ProxyError(502, f"connect to {endpoint.addr} failed: {exc.strerror or exc}") from None


class EndpointPool:
    """Upstream connections per endpoint, as the HTTP/1 and HTTP/2 pools keep them.

    ``conns[endpoint]`` lists the connections the pool holds (idle ones for
    HTTP/1, multiplexed ones for HTTP/2); each connection knows its
    ``endpoint`` and ``transport``.  Subclasses say how a connection is picked
    and when it goes back.
    """

    def __init__(self, connector, metrics, direction: str, *, connect_timeout: float) -> None:
        self.connector = connector
        self.metrics = metrics
        self.direction = direction
        self.connect_timeout = connect_timeout
        self.conns: dict[Endpoint, list] = {}

    def forget(self, conn) -> None:
        """*conn* is closing or unusable: the pool stops handing it out."""
        conns = self.conns.get(conn.endpoint)
        if conns and conn in conns:
            conns.remove(conn)

    def close(self) -> None:
        for conns in self.conns.values():
            for conn in conns:
                conn.transport.close()
        self.conns.clear()

    async def dial(self, endpoint: Endpoint, authority: str | None, protocol_factory, *, alpn: list[str]):
        """A new connection to *endpoint*, its tcp_* series labelled with the mTLS identity it must present."""
        server_id = mesh_identity(self.connector, endpoint)
        stats = self.metrics.tcp(self.direction, "dst", authority, endpoint.addr,
                                 "true" if server_id else "no_identity", server_id)
        _transport, conn = await open_connection(self.connector, endpoint, lambda: protocol_factory(self, endpoint, stats),
                                                 timeout=self.connect_timeout, alpn=alpn)
        return conn


def split_authority(authority: str, default_port: int = 80) -> tuple[str, int]:
    """``host[:port]`` / ``[v6]:port`` -> (host, port); ValueError when malformed."""
    authority = authority.strip()
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")
    if not host:
        raise ValueError(f"bad authority {authority!r}")
    if port and not port.isdigit():
        raise ValueError(f"bad port in authority {authority!r}")
    return host, int(port) if port else default_port


class DirectRouter:
    """Default outbound router: the original destination, else the Host (ingress mode).

    *own_addrs* are the proxy's own listeners: a request addressed to one of
    them would loop back into the proxy, so it gets a 502 instead.
    """

    def __init__(self, *, own_addrs: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.own_ports = {port for _host, port in own_addrs}
        self.own_addrs = own_addrs

    def _looping(self, host: str, port: int) -> bool:
        if port not in self.own_ports:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host == "localhost"
        return ip.is_loopback or ip.is_unspecified or (str(ip), port) in self.own_addrs

    def endpoint_for(self, host: str, port: int) -> Endpoint:
        if self._looping(host, port):
            raise ProxyError(502, "request would loop back into the proxy")
        return Endpoint(host, port)

    def select(self, target: Target) -> Endpoint:
        if target.orig_dst is not None:
            return self.endpoint_for(*target.orig_dst)
        if not target.authority:
            raise ProxyError(503, "no original destination and no authority to route by")
        try:
            host, port = split_authority(target.authority)
        except ValueError as exc:
            raise ProxyError(400, str(exc)) from None
        return self.endpoint_for(host, port)

    def observe(self, endpoint: Endpoint, outcome: Outcome) -> None:
        """Hook for balancers (peak-EWMA feeds on outcome.latency); nothing to learn by default."""

    def direct(self, request: Request) -> bool:
        """True when *request* needs nothing of dispatch() beyond select() and observe().

        The HTTP/1 fast path (no task per request) is taken only then.  A router
        that overrides dispatch() for some requests (retries, timeouts) answers
        False for those and True for the rest.
        """
        return type(self).dispatch is DirectRouter.dispatch

    def target(self, request: Request) -> Target:
        ctx = request.context
        return Target(ctx.direction, request.authority, ctx.orig_dst, request.protocol)

    async def dispatch(self, request: Request, upstream: Upstream) -> Response:
        """One exchange; wrap or override for retries, timeouts and route policy."""
        endpoint = self.select(self.target(request))
        start = time.monotonic()
        try:
            response = await upstream.send(request, endpoint)
        except ProxyError as exc:
            self.observe(endpoint, Outcome(None, time.monotonic() - start, exc.reason))
            raise
        self.observe(endpoint, Outcome(response.status, time.monotonic() - start))
        return response


class InboundRouter(DirectRouter):
    """Inbound: the application on *forward_host*, at the original destination's port.

    A connection that was not redirected (loopback testing, no iptables) is
    routed by the port of its Host header, on the same forward host.
    """

    def __init__(self, forward_host: str, *, own_addrs: frozenset[tuple[str, int]] = frozenset()) -> None:
        super().__init__(own_addrs=own_addrs)
        self.forward_host = forward_host

    def select(self, target: Target) -> Endpoint:
        if target.orig_dst is not None:
            return self.endpoint_for(self.forward_host, target.orig_dst[1])
        if not target.authority:
            raise ProxyError(503, "no original destination and no authority to route by")
        try:
            _host, port = split_authority(target.authority)
        except ValueError as exc:
            raise ProxyError(400, str(exc)) from None
        return self.endpoint_for(self.forward_host, port)


# select() implementations that depend on nothing but the request's target (and the
# router's own listeners, fixed once serving).
_PURE_SELECTS = (DirectRouter.select, InboundRouter.select)


def select_is_pure(router) -> bool:
    """True when *router*'s select() is a pure function of the target: the HTTP/1 fast path
    and the HTTP/2 direct path may then remember its answer per authority.

    Asked of the bound methods that will run, not of the router's class: TrafficRouter (the
    outbound default) selects as DirectRouter does for the names the destination service is
    not asked about, the only ones its direct() lets through, and AuthorizingRouter (the
    inbound policy) hands select() and target() to the InboundRouter it wraps.
    """
    select = getattr(router, "select", None)
    owner = getattr(select, "__self__", None)
    if owner is None or getattr(select, "__func__", None) not in _PURE_SELECTS:
        return False
    target = getattr(router, "target", None)
    cls = type(owner)
    return (getattr(target, "__func__", None) is DirectRouter.target and getattr(target, "__self__", None) is owner
            and cls.endpoint_for is DirectRouter.endpoint_for and cls._looping is DirectRouter._looping)


def default_router(direction: str, forward_host: str, own_addrs: frozenset[tuple[str, int]]) -> DirectRouter:
    if direction == INBOUND:
        return InboundRouter(forward_host, own_addrs=own_addrs)
    return DirectRouter(own_addrs=own_addrs)
