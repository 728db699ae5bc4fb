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
import contextlib
import ipaddress
import time
from collections.abc import Callable
from typing import Protocol

from meshctl_proxy.model import INBOUND, OUTBOUND, Endpoint, Outcome, ProxyError, Request, Response, Target
from meshctl_proxy.wire.addresses import canonical_host


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


# Idle upstream connections (issue 13, class 7).  hyper's client pool, Linkerd's, closes a
# connection idle for 90 s; nothing bounded them here, per endpoint or in all.
IDLE_TIMEOUT = 90.0
MAX_IDLE = 1024


class EndpointPool:
    """Upstream connections per endpoint, as the HTTP/1 and HTTP/2 pools keep them.

    ``conns[endpoint]`` lists the connections the pool holds (idle ones for
    HTTP/1, multiplexed ones for HTTP/2); each connection knows its
    ``endpoint`` and ``transport``.  Subclasses say how a connection is picked
    and when it goes back.

    Idle connections are bounded twice: one idle for *idle_timeout* is closed
    (hyper's pool default, 90 s), and past *max_idle* idle connections in all,
    across endpoints, the longest idle is closed.  Endpoints arrive in canonical
    form (``DirectRouter.endpoint_for``), so respelling an address does not make
    a new pool either.  An HTTP/1 connection is idle between :meth:`park` (back
    in the pool) and :meth:`unpark` (taken out); the HTTP/2 pool sweeps its
    connections without open streams (``H2Pool``).
    """

    def __init__(self, connector, metrics, direction: str, *, connect_timeout: float,
                 idle_timeout: float = IDLE_TIMEOUT, max_idle: int = MAX_IDLE) -> None:
        self.connector = connector
        self.metrics = metrics
        self.direction = direction
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.conns: dict[Endpoint, list] = {}
        # Parked connections -> when they were parked; dict order is park order, oldest first.
        self.idle: dict = {}
        self._expiry: asyncio.TimerHandle | None = None

    def forget(self, conn) -> None:
        """*conn* is closing or unusable: the pool stops handing it out."""
        self.idle.pop(conn, None)
        endpoint = conn.endpoint
        conns = self.conns.get(endpoint)
        if conns is not None:
            if conn in conns:
                conns.remove(conn)
            if not conns:
                del self.conns[endpoint]

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for conns in self.conns.values():
            for conn in conns:
                conn.transport.close()
        self.conns.clear()
        self.idle.clear()

    def park(self, conn, now: float) -> None:
        """*conn* is idle from *now* (loop time): it counts against max_idle and expires after idle_timeout."""
        idle = self.idle
        idle[conn] = now
        if len(idle) > self.max_idle:
            self.evict(next(iter(idle)))
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_at(now + self.idle_timeout, self._expire)

    def unpark(self, conn) -> None:
        """*conn* is in use again."""
        self.idle.pop(conn, None)

    def evict(self, conn) -> None:
        """Close an idle connection the pool will not keep."""
        self.forget(conn)
        conn.transport.close()

    def _expire(self) -> None:
        self._expiry = None
        idle = self.idle
        loop = asyncio.get_running_loop()
        oldest_allowed = loop.time() - self.idle_timeout
        while idle:
            conn, since = next(iter(idle.items()))
            if since > oldest_allowed:
                self._expiry = loop.call_at(since + self.idle_timeout, self._expire)
                break
            self.evict(conn)

    async def dial(self, endpoint: Endpoint, authority: str | None, protocol_factory, *, alpn: list[str]):
        """A new connection to *endpoint*, its tcp_* series labelled with the mTLS identity it must present."""
        server_id = mesh_identity(self.connector, endpoint)
        stats = self.metrics.tcp(self.direction, "dst", authority, endpoint.addr,
                                 "true" if server_id else "no_identity", server_id,
                                 endpoint.labels if self.direction == OUTBOUND else ())
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

    Besides dispatch(), a router offers the exchange (meshctl_proxy.transport.exchange)
    a shortcut: ``shortcut(request)`` names the endpoint when the request needs
    nothing of dispatch() but sending there, without side effects, and
    ``commit(request, endpoint)`` does what dispatch() would have done before
    sending, once the exchange has taken the shortcut.  ``observes`` declares
    whether observe() wants the outcome of a shortcut exchange.
    """

    # observe() learns nothing here: the exchange need not report shortcut outcomes.
    observes = False
    # select() answers from the request's authority and the connection's original destination
    # alone (and the listeners, fixed once serving), so shortcut() remembers its answers, and the
    # exchange may remember them per connection and authority.  A subclass that overrides
    # select(), target(), endpoint_for() or shortcut() is asked every time unless it declares the
    # same (see __init_subclass__).
    remembers_endpoints = True
    MAX_REMEMBERED = 1024

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "remembers_endpoints" not in own and any(name in own for name in ("select", "target", "endpoint_for", "shortcut")):
            cls.remembers_endpoints = False

    def __init__(self, *, own_addrs: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.own_ports = {port for _host, port in own_addrs}
        self.own_addrs = own_addrs
        self._remembered: dict[object, Endpoint] = {}
        # Per port, the addresses the proxy listens on: a listener on a wildcard address
        # (0.0.0.0, ::) is reached through every loopback address too, one on a specific
        # address only through that address.  So an application on 127.0.10.102:5000
        # behind a proxy listening on 127.0.10.2:5000 (meshctl demo's loopback pods) is
        # not a loop, while 127.0.0.1:4140 towards a proxy on 0.0.0.0:4140 is.
        self._listeners: dict[int, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        for host, port in own_addrs:
            with contextlib.suppress(ValueError):
                self._listeners.setdefault(port, []).append(ipaddress.ip_address(host))

    def _looping(self, host: str, port: int) -> bool:
        if port not in self.own_ports:
            return False
        listeners = self._listeners.get(port, ())
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            localhost = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
            return host == "localhost" and any(lip in localhost or lip.is_unspecified for lip in listeners)
        if ip.is_unspecified:  # connect() to 0.0.0.0 reaches this host's listeners on that port
            return True
        return any(lip == ip or (lip.is_unspecified and ip.is_loopback) for lip in listeners)

    def endpoint_for(self, host: str, port: int) -> Endpoint:
        # One spelling per address (wire.addresses): pools and the loop check compare endpoints,
        # and 127.1, 0x7f.1 or LOCALHOST must not be a new endpoint each (issue 13, classes 4, 7).
        host = canonical_host(host)
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

    def shortcut(self, request: Request) -> Endpoint | None:
        """The endpoint *request* goes to when it needs nothing of dispatch() but select() and a send; else None.

        No side effects (the exchange may ask and then dispatch): a request select()
        refuses answers None, and dispatch() gives its error.  A router that
        overrides dispatch() for some requests (retries, timeouts) answers None
        for those.
        """
        ctx = request.context
        orig_dst = ctx.orig_dst if ctx is not None else None
        # Keyed by the authority alone when the connection was not redirected (no tuple per request).
        key: object = request.authority if orig_dst is None else (request.authority, orig_dst)
        endpoint = self._remembered.get(key)
        if endpoint is None:
            try:
                endpoint = self.select(self.target(request))
            except ProxyError:
                return None
            if self.remembers_endpoints:
                if len(self._remembered) >= self.MAX_REMEMBERED:
                    self._remembered.clear()
                # The same Endpoint object each time: the pools' dicts then match it by identity.
                self._remembered[key] = endpoint
        return endpoint

    def commit(self, request: Request, endpoint: Endpoint) -> None:
        """The exchange took the shortcut to *endpoint*: do what dispatch() does before sending (nothing here)."""

    def target(self, request: Request) -> Target:
        ctx = request.context
        assert ctx is not None, "a routed request comes from an accepted connection"
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

    remembers_endpoints = True  # select() below depends on the target alone, as DirectRouter's

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


def default_router(direction: str, forward_host: str, own_addrs: frozenset[tuple[str, int]]) -> DirectRouter:
    if direction == INBOUND:
        return InboundRouter(forward_host, own_addrs=own_addrs)
    return DirectRouter(own_addrs=own_addrs)
