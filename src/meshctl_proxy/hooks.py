"""The per-request hook: where tap, policy and filters see every request (CONTRACTS.md section A).

The proxy keeps one :class:`RequestHooks` (``Proxy.hooks``); its
``observers`` list is what a feature registers with
(``proxy.hooks.observers.append(observer)``, also reachable as
``Proxy.observers``).  :mod:`meshctl_proxy.transport.exchange` calls
:meth:`RequestHooks.announce` exactly once per request, on HTTP/1.1 and
HTTP/2, on the shortcut and on the dispatch path, at the moment the first
attempt's endpoint is known (or, for a request answered before any endpoint
was chosen, when that answer is ready, with ``dst=None``).

An observer's ``on_request`` may refuse the request by raising
:class:`~meshctl_proxy.model.ProxyError` (a future authorization policy or
filter): nothing is sent upstream, the client gets that error's response, and
routers see it as :class:`~meshctl_proxy.model.RequestRefused` (never retried,
not held against the endpoint).
Watches already returned for the request end with the refusal as their error.

With no observer registered the request path pays one emptiness check
(``if hooks.observers``) and allocates nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from meshctl_proxy.model import INBOUND, OUTBOUND, ConnectionContext, Endpoint, ProxyError, Request, RequestRefused


@dataclasses.dataclass(frozen=True, slots=True)
class RequestMeta:
    id: int                        # per-proxy increasing request id
    direction: str                 # "inbound" | "outbound"
    protocol: str                  # "HTTP/1.1" | "HTTP/2"
    src: tuple[str, int]           # peer address of the accepted connection
    dst: tuple[str, int] | None    # endpoint chosen for the (first) attempt
    tls: bool                      # inbound: the accepted hop was mesh mTLS; outbound: mTLS originated
    client_id: str | None          # inbound: verified peer identity
    server_id: str | None          # outbound: identity required of the endpoint
    method: str
    scheme: str
    authority: str
    path: str
    route: str | None              # ServiceProfile route name when matched, else None
    header_names: tuple[str, ...]  # lower-case names only, never values


class ExchangeWatch(Protocol):
    def on_response(self, status: int, latency_s: float) -> None: ...

    def on_end(self, *, grpc_status: int | None, error: str | None, duration_s: float,
               response_bytes: int) -> None: ...


class ExchangeObserver(Protocol):
    def on_request(self, meta: RequestMeta) -> ExchangeWatch | None: ...


_PROTOCOL = {"http/1": "HTTP/1.1", "h2": "HTTP/2"}


class Watched:
    """The watches of one request: ``response`` at most once, ``end`` exactly once, whatever the path."""

    __slots__ = ("watches", "start", "responded", "ended")

    def __init__(self, watches: list[ExchangeWatch], start: float) -> None:
        self.watches = watches
        self.start = start  # loop.time() when the request arrived
        self.responded = False
        self.ended = False

    def response(self, status: int, now: float) -> None:
        if self.responded or self.ended:
            return
        self.responded = True
        latency = now - self.start
        for watch in self.watches:
            watch.on_response(status, latency)

    def end(self, now: float, *, grpc_status: int | None = None, error: str | None = None,
            response_bytes: int = 0) -> None:
        if self.ended:
            return
        self.ended = True
        duration = now - self.start
        for watch in self.watches:
            watch.on_end(grpc_status=grpc_status, error=error, duration_s=duration, response_bytes=response_bytes)


class RequestHooks:
    """The proxy's observers and its request ids."""

    __slots__ = ("observers", "_last_id")

    def __init__(self) -> None:
        self.observers: list[ExchangeObserver] = []
        self._last_id = 0

    def announce(self, ctx: ConnectionContext, request: Request, endpoint: Endpoint | None,
                 server_id: str | None, start: float) -> Watched | None:
        """Tell every observer about *request* (once: the caller guarantees it); None when nobody watches.

        Raises ProxyError when an observer refuses the request.
        """
        self._last_id += 1
        target = request.target
        query = target.find(b"?")
        meta = RequestMeta(
            id=self._last_id, direction=ctx.direction, protocol=_PROTOCOL.get(request.protocol, request.protocol),
            src=ctx.client_addr, dst=(endpoint.host, endpoint.port) if endpoint is not None else None,
            tls=ctx.tls == "true" if ctx.direction == INBOUND else server_id is not None,
            client_id=ctx.peer_identity if ctx.direction == INBOUND else None,
            server_id=server_id if ctx.direction == OUTBOUND else None,
            method=request.method.decode("latin-1"), scheme=request.scheme.decode("latin-1"),
            authority=request.authority, path=(target if query < 0 else target[:query]).decode("latin-1"),
            route=request.route, header_names=tuple(k.decode("latin-1").lower() for k, _v in request.headers))
        watches: list[ExchangeWatch] = []
        try:
            for observer in self.observers:
                watch = observer.on_request(meta)
                if watch is not None:
                    watches.append(watch)
        except ProxyError as exc:
            if watches:
                Watched(watches, start).end(start, error=exc.reason)
            raise RequestRefused(exc.status, exc.reason) from exc
        return Watched(watches, start) if watches else None
