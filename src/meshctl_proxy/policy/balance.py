"""Load balancers for one destination's endpoint set, sans-IO.

The I/O layer asks :meth:`acquire` for an endpoint before sending a request
and reports back with :meth:`release` (round-trip time, failed or not) when
the response arrives.  Time is passed in by the caller (seconds, monotonic),
so every rule below is tested with a fake clock.

:class:`PeakEwmaBalancer` is Linkerd's default (tower's ``PeakEwma`` behind
a power-of-two-choices picker, itself from Finagle):

- each endpoint has an RTT estimate; a slower sample replaces it at once
  (the "peak"), a faster one is blended in with weight ``1 - exp(-dt/tau)``,
  tau = 10 s; reading the estimate decays it the same way towards zero, so an
  endpoint that was slow and got no traffic is tried again eventually;
- cost = estimate x (pending + 1): in-flight requests count against an
  endpoint before their latency is known;
- a new endpoint starts at 30 ms (linkerd2-proxy's ``DEFAULT_RTT_ESTIMATE``);
- pick two distinct endpoints at random and send to the cheaper one, which
  avoids the herd behaviour of "always the least loaded" with stale data.

Failure accrual (Linkerd's consecutive-failures circuit breaker): an endpoint
that fails 7 times in a row is set aside; after a backoff (1 s doubling to
60 s) it may take one probe request; success restores it, failure sets it
aside again for longer.

Endpoint set updates keep the state of endpoints that stay, and in-flight
requests to removed endpoints simply complete: their release is accepted and
forgotten.  WeightedAddr weights are carried but not used for picking, as in
Linkerd's p2c balancer; traffic splitting by weight happens between
authorities (``dstOverrides``, see :mod:`meshctl_proxy.policy.route_policy`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any, Protocol

from meshctl_proxy.discovery.resolution import WeightedAddr

DEFAULT_RTT = 0.030  # linkerd2-proxy: DEFAULT_RTT_ESTIMATE = 30 ms
DECAY = 10.0  # linkerd2-proxy: EWMA_DECAY = 10 s
FAILURE_LIMIT = 7  # Linkerd's failure-accrual default (consecutive failures)
BACKOFF_MIN = 1.0  # Linkerd: failure-accrual backoff min 1 s, max 60 s
BACKOFF_MAX = 60.0


class Balancer(Protocol):
    """What the proxy's outbound path needs from a balancer."""

    def update(self, endpoints: Iterable[WeightedAddr]) -> None: ...

    def acquire(self, now: float) -> WeightedAddr | None: ...

    def release(self, endpoint: WeightedAddr, now: float, *, rtt: float | None, failed: bool) -> None: ...

    def ready(self, now: float) -> bool: ...

    def wake_at(self, now: float) -> float | None: ...

    def __len__(self) -> int: ...


class _State:
    """Mutable per-endpoint bookkeeping (not a dataclass: hot path, slots only)."""

    __slots__ = ("endpoint", "rtt", "stamp", "pending", "failures", "aside_until", "backoff", "probing")

    def __init__(self, endpoint: WeightedAddr, now: float, rtt: float) -> None:
        self.endpoint = endpoint
        self.rtt = rtt
        self.stamp = now
        self.pending = 0
        self.failures = 0
        self.aside_until: float | None = None  # set aside until then; None = in service
        self.backoff = BACKOFF_MIN
        self.probing = False  # the one probe after a backoff is in flight


class _Base:
    def __init__(self, *, failure_limit: int = FAILURE_LIMIT, backoff_min: float = BACKOFF_MIN,
                 backoff_max: float = BACKOFF_MAX, rng: random.Random | None = None) -> None:
        self._states: dict[tuple[str, int], _State] = {}
        self._retired: dict[tuple[str, int], _State] = {}  # removed, requests still in flight
        self._failure_limit = failure_limit
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._now = 0.0

    # -- endpoint set --------------------------------------------------------
    def update(self, endpoints: Iterable[WeightedAddr]) -> None:
        fresh: dict[tuple[str, int], _State] = {}
        for ep in endpoints:
            st = self._states.pop(ep.address, None) or self._retired.pop(ep.address, None)
            if st is None:
                st = _State(ep, self._now, self._initial_rtt())
            st.endpoint = ep  # metadata (weight, identity) may have changed
            fresh[ep.address] = st
        for addr, st in self._states.items():
            if st.pending:
                self._retired[addr] = st
        self._states = fresh

    def _initial_rtt(self) -> float:
        return 0.0

    def endpoints(self) -> list[WeightedAddr]:
        return [st.endpoint for st in self._states.values()]

    def __len__(self) -> int:
        return len(self._states)

    def pending(self, endpoint: WeightedAddr) -> int:
        st = self._states.get(endpoint.address) or self._retired.get(endpoint.address)
        return st.pending if st else 0

    def is_set_aside(self, endpoint: WeightedAddr) -> bool:
        st = self._states.get(endpoint.address)
        return bool(st and st.aside_until is not None)

    # -- availability (failure accrual) ---------------------------------------
    def _available(self, now: float) -> list[_State]:
        out = []
        for st in self._states.values():
            if st.aside_until is None or (not st.probing and now >= st.aside_until):
                out.append(st)
        return out

    def ready(self, now: float) -> bool:
        """Would :meth:`acquire` give an endpoint now (without taking one)?"""
        return any(st.aside_until is None or (not st.probing and now >= st.aside_until)
                   for st in self._states.values())

    def wake_at(self, now: float) -> float | None:
        """When a set-aside endpoint may next be probed (None: nothing to wait for)."""
        times = [st.aside_until for st in self._states.values()
                 if st.aside_until is not None and not st.probing]
        return max(now, min(times)) if times else None

    def _take(self, st: _State, now: float) -> WeightedAddr:
        if st.aside_until is not None:
            st.probing = True
        st.pending += 1
        return st.endpoint

    def release(self, endpoint: WeightedAddr, now: float, *, rtt: float | None, failed: bool) -> None:
        self._now = max(self._now, now)
        addr = endpoint.address
        st = self._states.get(addr)
        if st is None:
            retired = self._retired.get(addr)
            if retired is not None:
                retired.pending -= 1
                if retired.pending <= 0:
                    del self._retired[addr]
            return
        st.pending = max(0, st.pending - 1)
        if rtt is not None:
            self._observe(st, now, rtt)
        if failed:
            st.failures += 1
            if st.probing or st.failures >= self._failure_limit:
                if st.aside_until is not None:  # a failed probe: wait longer next time
                    st.backoff = min(self._backoff_max, st.backoff * 2)
                st.aside_until = now + st.backoff
                st.probing = False
        else:
            st.failures = 0
            st.aside_until = None
            st.probing = False
            st.backoff = self._backoff_min

    def _observe(self, st: _State, now: float, rtt: float) -> None:
        pass


class PeakEwmaBalancer(_Base):
    """Power of two choices over peak-EWMA cost (see the module docstring)."""

    def __init__(self, *, default_rtt: float = DEFAULT_RTT, decay: float = DECAY, **kw: Any) -> None:
        super().__init__(**kw)
        self._default_rtt = default_rtt
        self._decay = decay

    def _initial_rtt(self) -> float:
        return self._default_rtt

    def _estimate(self, st: _State, now: float, sample: float = 0.0) -> float:
        # tower::load::peak_ewma::RttEstimate::update: a slower sample wins at
        # once; otherwise blend by recency.  Reading the cost decays towards 0
        # (sample 0), which lets an idle once-slow endpoint earn a new trial.
        if sample > st.rtt:
            st.rtt = sample
        else:
            elapsed = max(0.0, now - st.stamp)
            w = math.exp(-elapsed / self._decay)
            st.rtt = st.rtt * w + sample * (1.0 - w)
        st.stamp = max(st.stamp, now)
        return st.rtt

    def rtt_estimate(self, endpoint: WeightedAddr) -> float:
        return self._states[endpoint.address].rtt

    def cost(self, endpoint: WeightedAddr, now: float) -> float:
        st = self._states[endpoint.address]
        return self._estimate(st, now) * (st.pending + 1)

    def _observe(self, st: _State, now: float, rtt: float) -> None:
        self._estimate(st, now, rtt)

    def acquire(self, now: float) -> WeightedAddr | None:
        self._now = max(self._now, now)
        avail = self._available(now)
        n = len(avail)
        if n == 0:
            return None
        if n == 1:
            return self._take(avail[0], now)
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = avail[i], avail[j]
        ca = self._estimate(a, now) * (a.pending + 1)
        cb = self._estimate(b, now) * (b.pending + 1)
        return self._take(a if ca <= cb else b, now)


class RoundRobinBalancer(_Base):
    """The baseline: each available endpoint in turn, blind to latency."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._next = 0

    def acquire(self, now: float) -> WeightedAddr | None:
        self._now = max(self._now, now)
        avail = self._available(now)
        if not avail:
            return None
        st = avail[self._next % len(avail)]
        self._next = (self._next + 1) % len(avail)
        return self._take(st, now)


def make_balancer(kind: str, *, rng: random.Random | None = None) -> Balancer:
    """The balancer MESHCTL_PROXY_BALANCER names (``peak-ewma`` or ``round-robin``)."""
    if kind == "peak-ewma":
        return PeakEwmaBalancer(rng=rng)
    if kind == "round-robin":
        return RoundRobinBalancer(rng=rng)
    raise ValueError(f"unknown balancer {kind!r}")
