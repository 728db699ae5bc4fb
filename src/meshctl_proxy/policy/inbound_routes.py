"""Inbound route metrics: the routes this workload serves, counted as Linkerd's inbound proxy counts them.

linkerd2-proxy's inbound side looks up the ServiceProfile of each request's
authority (its own service, as the caller addressed it), matches the request
against the profile's routes (first match wins, unmatched requests are
``[DEFAULT]``) and records ``route_request_total``, ``route_response_total``
and ``route_response_latency_ms`` with ``direction="inbound"`` and ``dst`` the
authority; ``linkerd viz routes deploy/x`` reads those.  Retries and timeouts
are the client's business (its outbound proxy), so the inbound side only
classifies and counts: no ``route_actual_*`` here.

:class:`ProfiledInboundRouter` does that at the router seam
(:mod:`meshctl_proxy.policy.router`):

- the profile comes from the destination service, through the same
  :class:`~meshctl_proxy.discovery.client.DestinationClient` (one watch per
  authority) the outbound side uses; only names under the profile suffixes are
  asked about, others are served without route metrics;
- the first request for an authority takes ``dispatch()`` and waits for that
  lookup (bounded by ``MESHCTL_PROXY_DESTINATION_INITIAL_TIMEOUT``), as
  Linkerd's inbound profile discovery does; until it is done ``shortcut()``
  answers None, and says that None is temporary (``shortcut_waits_for_lookup``:
  the exchange does not remember it for the connection);
- afterwards ``shortcut()`` is the InboundRouter's and ``commit()`` matches the
  route and counts the request; the exchange hands the response to the
  request's :class:`RouteTally` (``Request.route_stats``) once, on whichever path
  it took (``RequestPath.observe``, declared by ``counts_routes``);
- a changed profile applies to the next request (the watch's generation).
"""

from __future__ import annotations

import time

from meshctl_proxy.discovery.client import DestinationClient, Watch
from meshctl_proxy.discovery.resolution import Resolution, normalize_authority
from meshctl_proxy.model import INBOUND, Endpoint, ProxyError, Request, Response
from meshctl_proxy.policy import service_profile
from meshctl_proxy.policy.route_policy import DEFAULT_ROUTE, CompiledProfile, RoutePolicy
from meshctl_proxy.policy.router import InboundRouter, Upstream
from meshctl_proxy.telemetry.metrics import RequestStats, ResponseStats
from meshctl_proxy.telemetry.route_metrics import RouteMetrics

_UNSEEN: object = object()
# Raw Host / :authority values remembered (they come from the network): past this, forgotten and asked again.
MAX_RAW_AUTHORITIES = 10_000


class RouteTally:
    """Where requests of one (authority, route) count: the route_* series and the route's response classes."""

    __slots__ = ("stats", "route", "_by_status")

    def __init__(self, stats: RequestStats, route: service_profile.Route) -> None:
        self.stats = stats
        self.route = route
        # The response series per status: a route's class follows from the status alone.
        self._by_status: dict[int, ResponseStats] = {}

    def record(self, status: int, latency_ms: float) -> None:
        """The response head (or the proxy's error status) of a request counted here."""
        rs = self._by_status.get(status)
        if rs is None:
            cls = "failure" if self.route.is_failure(status) else "success"
            rs = self.stats.response_series(status, cls)
            if self.stats.responses.get((status, cls, None)) is rs:  # a series the cap folded is asked again
                self._by_status[status] = rs
        rs.observe(latency_ms)


def count_route_response(request: Request, status: int, latency_ms: float) -> None:
    """Count the answer to *request* in the route its router counted it in, if any, once.

    The first place that knows the answer counts it (the router's dispatch(), the exchange after a
    shortcut, the hook's refusal) and clears ``request.route_stats``, so no path counts it twice.
    """
    tally = request.route_stats
    if tally is not None:
        request.route_stats = None
        tally.record(status, latency_ms)


class ServedAuthority:
    """One authority this proxy serves: its watch, the compiled profile and the tallies of its routes."""

    __slots__ = ("authority", "watch", "resolution", "profile", "policy", "tallies")

    def __init__(self, authority: str, watch: Watch) -> None:
        self.authority = authority
        self.watch = watch
        self.resolution: Resolution | None = None  # the one applied (the watch sets a new object per change)
        self.profile = CompiledProfile(authority)
        self.policy: RoutePolicy | None = None  # None: the destination service does not know the name
        self.tallies: dict[str, RouteTally] = {}

    def refresh(self) -> None:
        """Apply the watch's latest resolution, if it changed since the last request."""
        res = self.watch.resolution
        if res is self.resolution or res is None:  # (None: a new watch that has not answered yet)
            return
        self.resolution = res
        if not res.known:
            self.policy = None
            self.tallies = {}
        elif self.profile.update(res.profile) or self.policy is None:
            self.policy = self.profile.policy
            self.tallies = {}  # route objects of the old profile classify no more responses


class ProfiledInboundRouter(InboundRouter):
    """The inbound router with Linkerd's inbound route metrics (module docstring)."""

    # The endpoint depends on the target alone (InboundRouter's select()); the route is found per
    # request in commit(), so shortcut() answers may be remembered once the lookup is done.
    remembers_endpoints = True
    shortcut_waits_for_lookup = True
    observes = False
    counts_routes = True

    def __init__(self, forward_host: str, client: DestinationClient, metrics: RouteMetrics, *,
                 own_addrs: frozenset[tuple[str, int]] = frozenset()) -> None:
        super().__init__(forward_host, own_addrs=own_addrs)
        self.client = client
        self.metrics = metrics
        # Raw authority -> what serves it: a ServedAuthority, None (not a name the mesh is asked about)
        # or absent (not looked up yet).  Many raw spellings may share one ServedAuthority.
        self._served: dict[str, ServedAuthority | None] = {}
        self._by_authority: dict[str, ServedAuthority] = {}

    async def aclose(self) -> None:
        await self.client.aclose()

    def shortcut(self, request: Request) -> Endpoint | None:
        """InboundRouter's shortcut once the request's authority was looked up; None before (dispatch looks)."""
        served = self._served.get(request.authority, _UNSEEN)
        # (A watch the client evicted is watched again by dispatch.)
        if served is None or (isinstance(served, ServedAuthority) and not served.watch.closed):
            return InboundRouter.shortcut(self, request)
        return None

    def commit(self, request: Request, endpoint: Endpoint) -> None:
        served = self._served.get(request.authority)
        if served is not None:
            self._count(request, served)

    async def dispatch(self, request: Request, upstream: Upstream) -> Response:
        served = await self._look_up(request.authority)
        tally = self._count(request, served) if served is not None else None
        if tally is None:
            return await super().dispatch(request, upstream)
        start = time.monotonic()
        try:
            response = await super().dispatch(request, upstream)
        except ProxyError as exc:
            count_route_response(request, exc.status, (time.monotonic() - start) * 1000)
            raise
        count_route_response(request, response.status, (time.monotonic() - start) * 1000)
        return response

    def _count(self, request: Request, served: ServedAuthority) -> RouteTally | None:
        """Match *request* to a route of its authority's profile and count it there (Request.route_stats)."""
        watch = served.watch
        if watch.closed:  # evicted by the client to make room: watch again (the policy so far stays meanwhile)
            watch = served.watch = self.client.watch(served.authority)
        watch.last_used = time.monotonic()  # in use: the client evicts the least recently used watches first
        if watch.resolution is not served.resolution:
            served.refresh()
        policy = served.policy
        if policy is None:
            return None
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        route = policy.match(request.method.decode("latin-1"), path)
        tally = served.tallies.get(route.name)
        if tally is None:
            tally = served.tallies[route.name] = RouteTally(
                self.metrics.logical(INBOUND, served.authority, route.name), route)
        tally.stats.requests += 1
        if route is not DEFAULT_ROUTE:
            request.route = route.name  # for the per-request hook (tap)
        request.route_stats = tally
        return tally

    async def _look_up(self, raw: str) -> ServedAuthority | None:
        """The ServedAuthority of *raw*, after the destination service answered (or its first wait ran out)."""
        known = self._served.get(raw, _UNSEEN)
        if known is None:
            return None
        if isinstance(known, ServedAuthority) and not known.watch.closed:
            return known
        try:
            authority = normalize_authority(raw) if raw and self.client.should_resolve(raw) else None
        except ValueError:
            authority = None
        served: ServedAuthority | None = None
        if authority is not None:
            await self.client.resolve(authority)  # waits for the first answer, bounded; the watch stays
            served = self._by_authority.get(authority)
            if served is None or served.watch.closed:
                if len(self._by_authority) >= self.client.max_watches:
                    self._by_authority = {a: s for a, s in self._by_authority.items() if not s.watch.closed}
                served = self._by_authority[authority] = ServedAuthority(authority, self.client.watch(authority))
        if len(self._served) >= MAX_RAW_AUTHORITIES:
            self._served.clear()
        self._served[raw] = served
        return served
