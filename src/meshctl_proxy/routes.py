"""Per-route policy from a ServiceProfile, sans-IO: matching, classification, splits.

A :class:`RoutePolicy` is compiled once per profile version (the destination
service pushes a new one on every change, and the next request uses it: no
restart).  Requests are matched against the routes in order and the first
match wins, as in Linkerd; a request that matches nothing belongs to the
default route (``rt_route="[DEFAULT]"`` in metrics), which is not retryable
and has no timeout.

Responses are classified by the route's response classes (first matching
class decides); when none matches, 5xx is a failure and everything else a
success (Linkerd's default classifier).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshctl_proxy.retry import (DEFAULT_MIN_RETRIES_PER_SECOND, DEFAULT_RETRY_RATIO, DEFAULT_TTL,
                                 RetryBudget)

DEFAULT_ROUTE_NAME = "[DEFAULT]"


def default_is_failure(status: int) -> bool:
    """Linkerd's default response classifier: a 5xx is a failure."""
    return status >= 500


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseClassRule:
    matches: Callable[[int], bool]
    is_failure: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    name: str
    matches: Callable[[str, str], bool]  # (method, path) -> bool
    response_classes: tuple[ResponseClassRule, ...] = ()
    is_retryable: bool = False
    timeout: float | None = None  # seconds, bounds the whole request including retries

    def is_failure(self, status: int) -> bool:
        for rc in self.response_classes:
            if rc.matches(status):
                return rc.is_failure
        return default_is_failure(status)


DEFAULT_ROUTE = Route(DEFAULT_ROUTE_NAME, lambda method, path: True)


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
        return RetryBudget(retry_ratio=self.retry_ratio, min_retries_per_second=self.min_retries_per_second,
                           ttl=self.ttl)


@dataclasses.dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Everything a profile says about requests to one authority."""

    routes: tuple[Route, ...] = ()
    budget: BudgetSpec = BudgetSpec()
    dst_overrides: tuple[WeightedAuthority, ...] = ()

    def match(self, method: str, path: str) -> Route:
        """First matching route wins (Linkerd); else the default route."""
        for route in self.routes:
            if route.matches(method, path):
                return route
        return DEFAULT_ROUTE

    def pick_authority(self, rng: random.Random | Callable[[], float]) -> str | None:
        """A ``dstOverrides`` target chosen in proportion to weight (None: no split)."""
        return pick_weighted(self.dst_overrides, rng)


EMPTY_POLICY = RoutePolicy()


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
    (:mod:`meshctl_proxy.profile`); this only turns it into the shape the
    request path wants.
    """
    if not doc:
        return EMPTY_POLICY
    from meshctl_proxy.profile import ServiceProfile

    return policy_from_profile(ServiceProfile.from_dict(dict(doc)))


def policy_from_profile(profile: Any) -> RoutePolicy:
    routes = []
    for r in profile.routes:
        routes.append(Route(
            name=r.name,
            matches=r.condition.matches,
            response_classes=tuple(ResponseClassRule(rc.condition.matches, bool(rc.is_failure))
                                   for rc in (r.response_classes or ())),
            is_retryable=bool(r.is_retryable),
            timeout=r.timeout_seconds if getattr(r, "timeout_seconds", None) else None,
        ))
    rb = profile.retry_budget
    budget = BudgetSpec(rb.retry_ratio, rb.min_retries_per_second, rb.ttl_seconds) if rb else BudgetSpec()
    overrides = tuple(WeightedAuthority(o.authority, float(o.weight)) for o in (profile.dst_overrides or ()))
    return RoutePolicy(tuple(routes), budget, overrides)
