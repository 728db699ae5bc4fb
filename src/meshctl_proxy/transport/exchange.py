"""The request exchange, written once for HTTP/1.1 and HTTP/2.

Both server connections (:mod:`~meshctl_proxy.transport.h1_server`,
:mod:`~meshctl_proxy.transport.h2_server`) hand every request to the same
steps, kept by one :class:`RequestPath` per accepted connection::

    request -> router.shortcut(request) --endpoint--> router.commit -> hook -> upstream.send --+
                    |                                                                          |
                    +--None--> router.dispatch(request, Exchange) -- first send: hook ---------+
                                                                                               v
    client <- protocol writes <- classify + count (series) + watch.on_response/on_end <- response

- **The shortcut** (``shortcut(request) -> Endpoint | None``, side-effect free,
  see :class:`~meshctl_proxy.policy.router.DirectRouter`): when it names an
  endpoint the exchange commits to it (``router.commit``) and never asks the
  router about that request again, on any path.  The protocols' fast paths
  (HTTP/1 from the parser callback, HTTP/2 from the stream's callback) are
  this shortcut without a task; when they cannot finish (no idle connection,
  no stream room) they continue here with the endpoint already chosen.
- **The hook** (:mod:`meshctl_proxy.hooks`): ``RequestPath.announce`` on the
  shortcut, ``Exchange.send`` on dispatch (the first attempt's endpoint), or
  ``Exchange.run`` for a request answered before any endpoint was chosen;
  :class:`Exchange` and the fast paths make sure it happens once.
- **Errors**: :meth:`Exchange.run` turns ``ProxyError`` and unexpected
  failures into the responses clients see; a failed request body and the
  protocol's own errors (``raw_errors``) go back to the protocol.
- **The stale-connection retry**: :func:`replayable` says whether a failed
  attempt may be sent again (the upstream processed none of it and the request
  has no body); ``HttpUpstream.send`` then sends it once more on a fresh
  connection (``resend``), and a fast path that meets such a failure hands the
  request here with ``run(endpoint, resend=True)``.  Once, wherever it happens.
- **Series**: :meth:`RequestPath.series` is the ``request_total`` /
  ``response_total`` series a request counts in, remembered while it repeats.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshctl_proxy.body import EMPTY, BodyError
from meshctl_proxy.hooks import Watched
from meshctl_proxy.model import OUTBOUND, Endpoint, Outcome, ProxyError, Request, Response
from meshctl_proxy.policy.inbound_routes import count_route_response
from meshctl_proxy.policy.router import mesh_identity

log = logging.getLogger("meshctl_proxy.exchange")

_NO_ENDPOINT: Any = object()  # the series cache's first key matches nothing; "not remembered" for shortcuts
MAX_REMEMBERED_AUTHORITIES = 64  # per connection: a client cycling through Host values only misses


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
        return metrics.http(OUTBOUND, authority, target, "true" if server_id else "no_identity", server_id,
                            endpoint.labels if endpoint is not None else ())
    return metrics.http(ctx.direction, authority, target, ctx.tls, ctx.peer_identity)


def replayable(request: Request, exc: BaseException) -> bool:
    """May *request*, whose attempt failed with *exc*, be sent again on a fresh connection?

    Only when the upstream processed none of it (``ProxyError.unprocessed``: a
    reused HTTP/1 connection the server had closed before any response byte,
    RFC 9112 section 9.3.1, as hyper retries only on reused connections; an
    HTTP/2 REFUSED_STREAM, RFC 9113 section 8.7) and it has no body to replay.
    """
    return request.body is EMPTY and getattr(exc, "unprocessed", False)


def grpc_status_of(response: Response) -> int | None:
    raw = response.grpc_status()
    return int(raw) if raw is not None and raw.isdigit() else None


def end_watch(watched: Watched, now: float, response: Response | None, error: str | None = None,
              status: int | None = None) -> None:
    """The request is over (answered, failed or abandoned): its watches hear the response and the end."""
    if response is not None:
        watched.response(response.status, now)
        watched.end(now, grpc_status=grpc_status_of(response), error=error or response.error,
                    response_bytes=response.body.consumed)
    else:
        if status is not None:
            watched.response(status, now)
        watched.end(now, error=error)


class RequestPath:
    """What the requests of one accepted connection go through: router, upstream, hook, series."""

    __slots__ = ("ctx", "router", "upstream", "hooks", "metrics", "observes", "outbound", "raw_errors",
                 "_router_observes", "_shortcut", "_series", "_remembers", "_remembers_none", "_shortcuts")

    def __init__(self, proxy, ctx, *, raw_errors: tuple[type[BaseException], ...] = ()) -> None:
        self.ctx = ctx
        self.router = router = proxy.routers[ctx.direction]
        self.upstream = proxy.upstreams[ctx.direction]
        self.hooks = proxy.hooks
        self.metrics = proxy.metrics
        # A router that declares nothing is assumed to want its outcomes and to have no shortcut.
        self._router_observes: bool = getattr(router, "observes", True)
        # observe() runs after each shortcut exchange when the router wants the outcome, or counts the
        # request's route (counts_routes: the inbound route metrics, Request.route_stats).
        self.observes: bool = self._router_observes or getattr(router, "counts_routes", False)
        self._shortcut = getattr(router, "shortcut", None)
        # A router whose shortcut answers depend on the authority and the connection alone says so
        # (remembers_endpoints): its answers are then remembered here, per authority.  One whose None
        # only means "not before a lookup is done" (shortcut_waits_for_lookup) has its endpoints
        # remembered, not its Nones.
        self._remembers: bool = getattr(router, "remembers_endpoints", False)
        self._remembers_none = not getattr(router, "shortcut_waits_for_lookup", False)
        self._shortcuts: dict[str, Endpoint | None] = {}
        self.outbound = ctx.direction == OUTBOUND
        self.raw_errors = raw_errors  # ProxyErrors the protocol answers itself (HTTP/2: a reset to pass on)
        self._series: tuple = (None, _NO_ENDPOINT, None)

    def series(self, authority: str, endpoint: Endpoint | None = None):
        """The series a request to *authority* (outbound: sent to *endpoint*) counts in."""
        if not self.outbound:
            endpoint = None  # inbound series are the accepted connection's
        cached = self._series
        if cached[1] is endpoint and cached[0] == authority:
            return cached[2]
        stats = http_series(self.metrics, self.ctx, authority, self.upstream.connector, endpoint)
        self._series = (authority, endpoint, stats)
        return stats

    def counted(self, authority: str, endpoint: Endpoint | None = None):
        """series(), with this request counted in it (the common case, inlined: once per request)."""
        if not self.outbound:
            endpoint = None
        cached = self._series
        if cached[1] is endpoint and cached[0] == authority:
            stats = cached[2]
        else:
            stats = self.series(authority, endpoint)
        stats.requests += 1
        return stats

    def take_shortcut(self, request: Request) -> Endpoint | None:
        """The router's shortcut for *request*, committed to; None: dispatch() it."""
        shortcut = self._shortcut
        if shortcut is None:
            return None
        if self._remembers:
            known = self._shortcuts
            endpoint = known.get(request.authority, _NO_ENDPOINT)
            if endpoint is _NO_ENDPOINT:
                endpoint = shortcut(request)
                if len(known) < MAX_REMEMBERED_AUTHORITIES and (endpoint is not None or self._remembers_none):
                    known[request.authority] = endpoint
        else:
            endpoint = shortcut(request)
        if endpoint is not None:
            self.router.commit(request, endpoint)
        return endpoint

    def announce(self, request: Request, endpoint: Endpoint | None, start: float) -> Watched | None:
        """The hook, for *request* going to *endpoint*; callers make sure it runs once per request."""
        server_id = mesh_identity(self.upstream.connector, endpoint) if self.outbound and endpoint else None
        try:
            return self.hooks.announce(self.ctx, request, endpoint, server_id, start)
        except ProxyError as exc:  # refused: that is the answer its route counts (nothing was sent)
            if request.route_stats is not None:
                count_route_response(request, exc.status, 0.0)
            raise

    def observe(self, request: Request, endpoint: Endpoint, response: Response | None, exc: BaseException | None,
                latency: float) -> None:
        """How a shortcut exchange went (its response head, or the failure), for whoever declared interest.

        The route the router's commit() counted the request in (``request.route_stats``) counts
        the response; a router that ``observes`` hears the outcome.  Called once per shortcut
        request, when ``observes`` (dispatch() sees its own responses).
        """
        if request.route_stats is not None:
            status = response.status if exc is None and response is not None else getattr(exc, "status", 502)
            count_route_response(request, status, latency * 1000)
        if not self._router_observes:
            return
        if exc is not None:
            self.router.observe(endpoint, Outcome(None, latency, getattr(exc, "reason", str(exc))))
        elif response is not None:
            self.router.observe(endpoint, Outcome(response.status if response.error is None else None, latency,
                                                  response.error))


class Exchange:
    """One request on the general path (a task): shortcut or dispatch, the hook once, errors mapped.

    Passed to ``router.dispatch`` as its upstream when someone watches, so that
    the first attempt's endpoint reaches the hook; retries do not call it again.
    """

    __slots__ = ("path", "request", "start", "watched", "announced", "refusal")

    def __init__(self, path: RequestPath, request: Request, start: float, *, watched: Watched | None = None,
                 announced: bool = False) -> None:
        self.path = path
        self.request = request
        self.start = start  # loop.time() when the request arrived
        self.watched = watched
        self.announced = announced
        self.refusal: ProxyError | None = None

    def _announce(self, request: Request, endpoint: Endpoint | None) -> None:
        if self.refusal is not None:
            raise self.refusal  # a retry of a refused request is refused again
        if self.announced:
            return
        self.announced = True
        try:
            self.watched = self.path.announce(request, endpoint, self.start)
        except ProxyError as exc:
            self.refusal = exc
            raise

    async def send(self, request: Request, endpoint: Endpoint) -> Response:
        """The upstream a dispatching router sees (``Upstream.send``)."""
        self._announce(request, endpoint)
        return await self.path.upstream.send(request, endpoint)

    async def run(self, endpoint: Endpoint | None = None, *, resend: bool = False) -> Response:
        """The response for the client.  *endpoint*: the shortcut was already taken (by a fast path);
        *resend*: and its attempt failed :func:`replayable`, so this is the one retry, on a fresh connection.

        Raises BodyError (the client's request body failed), the path's
        ``raw_errors`` and CancelledError; the hook has run by then all the same.
        """
        path = self.path
        request = self.request
        try:
            if endpoint is None:
                endpoint = path.take_shortcut(request)
            if endpoint is not None:
                response = await self._send_to(endpoint, resend)
            else:
                watching = bool(path.hooks.observers)
                response = await path.router.dispatch(request, self if watching else path.upstream)
        except ProxyError as exc:
            if path.raw_errors and isinstance(exc, path.raw_errors):
                self._announce_late()
                raise
            response = exc.response()
        except (BodyError, asyncio.CancelledError):
            self._announce_late()
            raise
        except Exception as exc:  # a bug or an unexpected upstream failure: answer, log, go on
            log.exception("dispatch failed")
            response = ProxyError(502, f"proxy error: {type(exc).__name__}").response()
        refusal = self._announce_late()
        if refusal is not None:
            response.body.discard()
            response = refusal.response()
        return response

    def _announce_late(self) -> ProxyError | None:
        """The hook for a request that ended before any endpoint was chosen (denied, nothing to send to,
        its body failed, the client left): observers hear of every request.  The refusal, if any."""
        if self.announced or not self.path.hooks.observers:
            return None
        try:
            self._announce(self.request, None)
        except ProxyError as exc:
            return exc
        return None

    async def _send_to(self, endpoint: Endpoint, resend: bool) -> Response:
        path = self.path
        if path.hooks.observers:
            self._announce(self.request, endpoint)
        send = path.upstream.resend if resend else path.upstream.send
        if not path.observes:
            return await send(self.request, endpoint)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            response = await send(self.request, endpoint)
        except ProxyError as exc:
            path.observe(self.request, endpoint, None, exc, loop.time() - sent)
            raise
        path.observe(self.request, endpoint, response, None, loop.time() - sent)
        return response
