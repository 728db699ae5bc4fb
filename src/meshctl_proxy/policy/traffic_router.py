"""Outbound traffic policy: the router the proxy's outbound side dispatches through.

:class:`TrafficRouter` plugs into the proxy's router seam (``docs/proxy.md``,
"Seams"): ``dispatch(request, upstream)`` is the whole exchange.  For each
request it

1. finds the logical destination: the Host / ``:authority``, else the original
   destination, resolved through the destination service
   (:mod:`meshctl_proxy.discovery.client`); names the mesh does not know go to
   :class:`~meshctl_proxy.policy.router.DirectRouter` (forwarded as addressed);
2. matches the destination's ServiceProfile routes (first match wins) and
   counts the request in ``route_*`` metrics;
3. picks a concrete authority by ``dstOverrides`` weight (a traffic split);
4. takes an endpoint from that authority's balancer (peak-EWMA or round robin,
   ``MESHCTL_PROXY_BALANCER``); with none available it waits at most
   ``MESHCTL_PROXY_OUTBOUND_FAILFAST_TIMEOUT`` (3 s) in a bounded queue, then
   answers 503 at once (Linkerd's fail-fast);
5. sends it, and when the route ``isRetryable``, the response is classified a
   failure, the body was at most 64 KiB (buffered for replay) and the retry
   budget allows, sends it again (to a fresh balancer pick);
6. bounds all of it by the route's ``timeout``: 504 with
   ``meshctl-proxy-error: request timeout``.

Everything that decides is sans-IO (:mod:`~meshctl_proxy.policy.balance`,
:mod:`~meshctl_proxy.policy.retry_budget`, :mod:`~meshctl_proxy.policy.route_policy`); this module only
sequences it around ``upstream.send``.  Each request reads the current
resolution, so a changed endpoint set or profile applies to the next request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from meshctl_proxy.policy.balance import Balancer, make_balancer
from meshctl_proxy.body import Body
from meshctl_proxy.discovery.client import DestinationClient, Watch
from meshctl_proxy.discovery.resolution import normalize_authority
from meshctl_proxy.model import OUTBOUND, Endpoint as ProxyEndpoint, ProxyError, Request, RequestRefused, Response
from meshctl_proxy.telemetry.route_metrics import RouteMetrics
from meshctl_proxy.policy.route_policy import DEFAULT_ROUTE, EMPTY_POLICY, CompiledProfile, RoutePolicy, route_timeout
from meshctl_proxy.policy.router import DirectRouter

# Linkerd buffers at most 64 KiB of a request body for replay; a larger (or
# unknown-length, streamed) body is sent once, without retries.
MAX_RETRY_BODY = 64 * 1024
TIMEOUT_REASON = "request timeout"
_RAW_CACHE_LIMIT = 10_000


class Destination:
    """One authority: its resolution, balancer, route policy and retry budget."""

    __slots__ = ("authority", "watch", "balancer", "generation", "policy", "budget", "endpoints", "waiting",
                 "known", "released", "unavailable_since", "profile")

    def __init__(self, authority: str, watch: Watch, balancer: Balancer) -> None:
        self.authority = authority
        self.watch = watch
        self.balancer = balancer
        self.generation = -1
        self.policy: RoutePolicy = EMPTY_POLICY
        self.budget = EMPTY_POLICY.budget.make()
        self.endpoints: dict[tuple[str, int], ProxyEndpoint] = {}
        self.waiting = 0  # requests queued for an endpoint
        # Set when a request finishes while others wait: a successful probe
        # brings a set-aside endpoint back, and the queue must hear it.
        self.released = asyncio.Event()
        self.known = True
        # Since when no endpoint has been available (clock time), or None.  Once that lasts the
        # fail-fast timeout the destination is in fail-fast: requests that find no endpoint are
        # answered 503 at once, not after waiting the timeout each (Linkerd's failfast state).
        # It ends when an endpoint answers well or the endpoint set brings endpoints.
        self.unavailable_since: float | None = None
        self.profile = CompiledProfile(authority)

    def refresh(self) -> None:
        """Apply the watch's latest resolution, if it changed since the last request."""
        w = self.watch
        if w.generation == self.generation:
            return
        self.generation = w.generation
        res = w.resolution
        self.known = res is None or res.known
        eps = res.endpoints if res is not None and res.known else ()
        self.balancer.update(eps)
        if eps:
            self.unavailable_since = None
        # The proxy's Endpoint carries the identity mTLS must verify; only a
        # meshed endpoint has one.
        self.endpoints = {e.address: ProxyEndpoint(e.host, e.port, e.identity if e.meshed and e.identity else None,
                                                     e.labels)
                          for e in eps}
        if self.profile.update(res.profile if res is not None else None):
            policy = self.profile.policy
            if policy.budget != self.policy.budget:
                self.budget = policy.budget.make()
            self.policy = policy


class TrafficRouter(DirectRouter):
    """The outbound router: discovery, balancing, routes, retries, timeouts, splits."""

    # shortcut() is DirectRouter's for the names the destination service is not asked about, which
    # the configured suffixes decide: its answers depend on the authority and the connection alone.
    remembers_endpoints = True

    def __init__(self, client: DestinationClient, *, balancer: str = "peak-ewma", failfast_timeout: float = 3.0,
                 buffer_capacity: int = 10_000, metrics: RouteMetrics | None = None, direction: str = OUTBOUND,
                 own_addrs: frozenset[tuple[str, int]] = frozenset(), rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(own_addrs=own_addrs)
        self.client = client
        self.balancer_kind = balancer
        self.failfast_timeout = failfast_timeout
        self.buffer_capacity = buffer_capacity
        self.metrics = metrics or RouteMetrics()
        self.direction = direction
        self.rng = rng or random.Random()
        self.clock = clock
        self.destinations: dict[str, Destination] = {}
        self._raw: dict[str, str | None] = {}  # raw Host / address -> normalized authority, or None: not ours

    @classmethod
    def from_config(cls, cfg, *, metrics: RouteMetrics, own_addrs: frozenset[tuple[str, int]] = frozenset(),
                    client: DestinationClient | None = None) -> "TrafficRouter":
        return cls(client or DestinationClient.from_config(cfg), balancer=cfg.balancer,
                   failfast_timeout=cfg.outbound_failfast_timeout, buffer_capacity=cfg.outbound_buffer_capacity,
                   metrics=metrics, own_addrs=own_addrs)

    def set_own_addrs(self, own_addrs: frozenset[tuple[str, int]]) -> None:
        self.own_addrs = own_addrs
        self.own_ports = {port for _host, port in own_addrs}
        self._remembered.clear()  # loop detection may now answer differently

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- which destination ----------------------------------------------------
    def _candidate(self, raw: str) -> str | None:
        auth = self._raw.get(raw, "")
        if auth == "":
            try:
                auth = normalize_authority(raw) if self.client.should_resolve(raw) else None
            except ValueError:
                auth = None
            if len(self._raw) >= _RAW_CACHE_LIMIT:
                self._raw.clear()
            self._raw[raw] = auth
        return auth

    async def logical_destination(self, request: Request) -> Destination | None:
        ctx = request.context
        raws = [request.authority] if request.authority else []
        target_addr = ctx.target_addr if ctx is not None else None
        if target_addr is not None:
            raws.append(target_addr)
        for raw in raws:
            auth = self._candidate(raw)
            if auth is None:
                continue
            dest = self.destinations.get(auth)
            if dest is not None and dest.watch.resolution is not None and not dest.watch.closed:
                dest.watch.last_used = time.monotonic()
                if dest.watch.resolution.known:
                    return dest
                continue
            res = await self.client.resolve(auth)
            if res is not None:
                return self.destination(res.authority)
        return None

    def destination(self, authority: str) -> Destination:
        dest = self.destinations.get(authority)
        if dest is None:
            if len(self.destinations) >= self.client.max_watches:
                # the client closes idle watches; forget the destinations that used them
                for auth in [a for a, d in self.destinations.items() if d.watch.closed]:
                    del self.destinations[auth]
            dest = self.destinations[authority] = Destination(
                authority, self.client.watch(authority), make_balancer(self.balancer_kind, rng=self.rng))
        elif dest.watch.closed:  # evicted while idle: a new stream, same balancer state
            dest.watch = self.client.watch(authority)
            dest.generation = -1
        return dest

    def shortcut(self, request: Request) -> ProxyEndpoint | None:
        """DirectRouter's shortcut for names the destination service is not asked about; None for the rest.

        Those need route policy, balancing and retries: dispatch() does them.
        """
        if request.authority and self._candidate(request.authority) is not None:
            return None
        ctx = request.context
        if ctx is not None and ctx.orig_dst is not None:  # (target_addr formats a string: only when redirected)
            target_addr = ctx.target_addr
            if target_addr is not None and self._candidate(target_addr) is not None:
                return None
        return DirectRouter.shortcut(self, request)  # (not super(): this runs on every request)

    # -- the exchange -----------------------------------------------------------
    async def dispatch(self, request: Request, upstream) -> Response:
        dest = await self.logical_destination(request)
        if dest is None:
            return await super().dispatch(request, upstream)
        return await self.exchange(dest, request, upstream)

    async def exchange(self, dest: Destination, request: Request, upstream) -> Response:
        dest.refresh()
        clock = self.clock
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        route = dest.policy.match(request.method.decode("latin-1"), path)
        if route is not DEFAULT_ROUTE:
            request.route = route.name  # for the per-request hook (meshctl_proxy.hooks)
        stats = self.metrics.logical(self.direction, dest.authority, route.name)
        stats.requests += 1
        concrete = dest
        if dest.policy.dst_overrides:
            picked = dest.policy.pick_authority(self.rng)
            if picked is not None:
                try:
                    auth = normalize_authority(picked)
                except ValueError:
                    auth = dest.authority
                if auth != dest.authority:
                    concrete = self.destination(auth)
        start = clock()
        timeout = route_timeout(route)
        try:
            if timeout is None:
                response = await self._attempts(dest, concrete, route, request, upstream)
            else:
                try:
                    async with asyncio.timeout(timeout) as scope:
                        response = await self._attempts(dest, concrete, route, request, upstream)
                except TimeoutError:
                    if not scope.expired():
                        raise
                    raise ProxyError(504, TIMEOUT_REASON) from None
        except ProxyError as exc:
            response = exc.response()
        failed = route.is_failure(response.status)
        stats.response(response.status, "failure" if failed else "success", (clock() - start) * 1000)
        return response

    async def _attempts(self, dest: Destination, concrete: Destination, route, request: Request,
                        upstream) -> Response:
        clock = self.clock
        replay: bytes | None = None
        if route.is_retryable and request.upgrade is None:
            body = request.body
            if body.done or body.complete and body.length == 0:
                replay = b""
            elif body.length is not None and body.length <= MAX_RETRY_BODY:
                replay = await body.read_all(MAX_RETRY_BODY)
        budget = dest.budget
        budget.deposit(clock())
        actual = self.metrics.actual(self.direction, concrete.authority, route.name)
        while True:
            req = request if replay is None else request.replace(body=Body.of(replay))
            endpoint, proxy_endpoint = await self._acquire(concrete)
            actual.requests += 1
            sent = clock()
            try:
                response = await upstream.send(req, proxy_endpoint)
            except RequestRefused:  # refused before sending (meshctl_proxy.hooks): not the endpoint's doing
                concrete.balancer.release(endpoint, clock(), rtt=None, failed=False)
                _wake(concrete)
                raise
            except ProxyError as exc:
                now = clock()
                concrete.balancer.release(endpoint, now, rtt=None, failed=True)
                _wake(concrete)
                actual.response(exc.status, "failure", (now - sent) * 1000)
                if replay is not None and concrete.balancer.ready(now) and budget.try_withdraw(now):
                    continue
                raise
            except BaseException:
                # Cancelled (the route timeout) or broken: what we waited is a
                # lower bound of this endpoint's latency, and the peak-EWMA
                # must hear it or a hung endpoint would keep looking fast.
                now = clock()
                concrete.balancer.release(endpoint, now, rtt=now - sent, failed=False)
                _wake(concrete)
                raise
            now = clock()
            failed = route.is_failure(response.status)
            concrete.balancer.release(endpoint, now, rtt=now - sent, failed=failed)
            if not failed:
                concrete.unavailable_since = None
            _wake(concrete)
            actual.response(response.status, "failure" if failed else "success", (now - sent) * 1000)
            # A retry goes only to an endpoint ready now: one that failure accrual set aside would
            # make the retry wait (up to the route timeout, a 504) where the failure it has is the
            # answer (issue 13, class 10).  Linkerd's retries likewise never queue.
            if failed and replay is not None and concrete.balancer.ready(now) and budget.try_withdraw(now):
                await _discard(response)
                continue
            return response

    async def _acquire(self, dest: Destination) -> tuple:
        """An endpoint of *dest*; waits (bounded queue, fail-fast timeout) when none is available."""
        dest.refresh()
        clock = self.clock
        dest.watch.last_used = time.monotonic()
        now = clock()
        endpoint = dest.balancer.acquire(now)
        if endpoint is not None:
            return endpoint, dest.endpoints[endpoint.address]
        if dest.unavailable_since is None:
            dest.unavailable_since = now
        # The fail-fast timeout runs from when the destination lost its last endpoint, not from each
        # request: once it has passed, the destination is known to be empty (or all set aside) and
        # requests are answered at once until endpoints return (Linkerd's failfast).
        deadline = dest.unavailable_since + self.failfast_timeout
        if now >= deadline:
            raise ProxyError(503, f"no endpoints available for {dest.authority} (fail-fast)")
        if dest.waiting >= self.buffer_capacity:
            raise ProxyError(503, f"too many requests waiting for endpoints of {dest.authority}")
        dest.waiting += 1
        try:
            while True:
                now = clock()
                if now >= deadline:
                    raise ProxyError(503, f"no endpoints available for {dest.authority}")
                wake = dest.balancer.wake_at(now)  # a set-aside endpoint's probe time
                wait = deadline - now if wake is None else min(deadline - now, max(0.001, wake - now))
                changed = asyncio.ensure_future(dest.watch.wait_changed(dest.generation, wait))
                released = asyncio.ensure_future(dest.released.wait())
                try:
                    await asyncio.wait((changed, released), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                    released.cancel()
                dest.refresh()
                endpoint = dest.balancer.acquire(clock())
                if endpoint is not None:
                    return endpoint, dest.endpoints[endpoint.address]
        finally:
            dest.waiting -= 1


def _wake(dest: Destination) -> None:
    """Tell requests queued on *dest* that an endpoint may be free again."""
    if dest.waiting:
        released, dest.released = dest.released, asyncio.Event()
        released.set()


async def _discard(response: Response) -> None:
    """Read and drop a failed response's body so its connection can be reused."""
    body = response.body
    while await body.read():
        pass
