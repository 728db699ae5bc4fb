"""Per-route policy from a ServiceProfile, sans-IO: matching, classification, splits.

A :class:`RoutePolicy` is compiled once per profile version (the destination
service pushes a new one on every change, and the next request uses it: no
restart).  Requests are matched against the routes in order and the first
match wins, as in Linkerd; a request that matches nothing belongs to the
default route (``rt_route="[DEFAULT]"`` in metrics), which is not retryable
and has no timeout.

Responses are classified by the route's response classes (first matching
class decides); when none matches, 5xx is a failure and everything else a
success (Linkerd's default classifier): ``route.is_failure(status)`` of the
ServiceProfile model.  Profile routes without a ``timeout`` get Linkerd's
10 s; the default route has none.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshctl_proxy.policy import service_profile as model
from meshctl_proxy.policy.retry_budget import (DEFAULT_MIN_RETRIES_PER_SECOND, DEFAULT_RETRY_RATIO, DEFAULT_TTL,
                                 RetryBudget)

log = logging.getLogger("meshctl_proxy.policy.route_policy")

DEFAULT_ROUTE_NAME = "[DEFAULT]"
# A request that matches no route: counted as "[DEFAULT]", default classifier,
# never retried, no route timeout (Linkerd's default route).
DEFAULT_ROUTE = model.Route(name=DEFAULT_ROUTE_NAME, condition=model.RequestMatch())


@dataclasses.dataclass(frozen=True, slots=True)
class WeightedAuthority:
    authority: str
    weight: float


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetSpec:
    retry_ratio: float = DEFAULT_RETRY_RATIO
    min_retries_per_second: float = DEFAULT_MIN_RETRIES_PER_SECOND
    ttl: float = DEFAULT_TTL

    def make(self) -> RetryBudget:
        # tower's Budget refuses a ttl outside 1 s..60 s; a profile may say
        # more or less, and the nearest budget we can keep is the clamped one.
        return RetryBudget(retry_ratio=self.retry_ratio, min_retries_per_second=self.min_retries_per_second,
                           ttl=min(60.0, max(1.0, self.ttl)))


@dataclasses.dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Everything a profile says about requests to one authority."""

    routes: tuple[model.Route, ...] = ()
    budget: BudgetSpec = BudgetSpec()
    dst_overrides: tuple[WeightedAuthority, ...] = ()

    def match(self, method: str, path: str) -> model.Route:
        """First matching route wins (Linkerd); else the default route."""
        for route in self.routes:
            if route.condition.matches(method, path):
                return route
        return DEFAULT_ROUTE

    def pick_authority(self, rng: random.Random | Callable[[], float]) -> str | None:
        """A ``dstOverrides`` target chosen in proportion to weight (None: no split)."""
        return pick_weighted(self.dst_overrides, rng)


EMPTY_POLICY = RoutePolicy()


def route_timeout(route: model.Route) -> float | None:
    """The route's timeout in seconds: its own, Linkerd's 10 s for profile routes, none for the default route."""
    if route is DEFAULT_ROUTE:
        return None
    return route.timeout_seconds if route.timeout_seconds is not None else model.DEFAULT_ROUTE_TIMEOUT


def pick_weighted(choices: Sequence[WeightedAuthority], rng: random.Random | Callable[[], float]) -> str | None:
    total = sum(c.weight for c in choices if c.weight > 0)
    if total <= 0:
        return None
    draw = (rng.random() if isinstance(rng, random.Random) else rng()) * total
    for c in choices:
        if c.weight <= 0:
            continue
        draw -= c.weight
        if draw < 0:
            return c.authority
    return next(c.authority for c in reversed(choices) if c.weight > 0)


def compile_profile(doc: Mapping[str, Any] | None) -> RoutePolicy:
    """The RoutePolicy of a ServiceProfile document (None: no profile, default behaviour).

    Parsing and validation belong to the ServiceProfile model
    (:mod:`meshctl_proxy.policy.service_profile`); raises its ``ProfileError``.
    """
    if not doc:
        return EMPTY_POLICY
    return policy_from_profile(model.ServiceProfile.from_dict(dict(doc)))


def policy_from_profile(profile: model.ServiceProfile) -> RoutePolicy:
    rb = profile.retry_budget
    budget = BudgetSpec(rb.retry_ratio, rb.min_retries_per_second, rb.ttl_seconds) if rb else BudgetSpec()
    overrides = tuple(WeightedAuthority(o.authority, o.weight_milli / 1000) for o in profile.dst_overrides)
    return RoutePolicy(profile.routes, budget, overrides)


class CompiledProfile:
    """The policy of the profile the destination service last sent for one authority (both sides' routers).

    Compiled once per profile version; a profile the model refuses keeps the
    last good policy (the destination service validated it: this is defence)
    and is logged once, not per request.
    """

    __slots__ = ("authority", "doc", "policy")

    def __init__(self, authority: str) -> None:
        self.authority = authority
        self.doc: Mapping[str, Any] | None = None
        self.policy: RoutePolicy = EMPTY_POLICY

    def update(self, doc: Mapping[str, Any] | None) -> bool:
        """Take the profile *doc* (None: no profile); True when the policy changed."""
        if doc == self.doc:
            return False
        self.doc = doc
        try:
            policy = compile_profile(doc)
        except model.ProfileError as exc:
            log.warning("profile for %s refused: %s", self.authority, exc)
            return False
        self.policy = policy
        return True
