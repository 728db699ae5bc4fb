"""Route matching (first match wins), response classification, weighted splits."""

from __future__ import annotations

import collections
import random
import re

from meshctl_proxy.routes import (DEFAULT_ROUTE_NAME, ResponseClassRule, Route, RoutePolicy,
                                  WeightedAuthority, default_is_failure)


def rx(method: str, pattern: str):
    compiled = re.compile(pattern)
    return lambda m, p: m == method and compiled.fullmatch(p) is not None


def test_first_match_wins_and_unmatched_goes_to_default():
    policy = RoutePolicy(routes=(
        Route("GET /books/{id}", rx("GET", r"/books/[^/]+")),
        Route("GET /books/special", rx("GET", r"/books/special")),
    ))
    assert policy.match("GET", "/books/special").name == "GET /books/{id}"
    assert policy.match("GET", "/books/a/b").name == DEFAULT_ROUTE_NAME
    assert policy.match("POST", "/books/1").name == DEFAULT_ROUTE_NAME
    default = policy.match("DELETE", "/")
    assert not default.is_retryable and default.timeout is None


def test_default_classifier_is_5xx():
    assert default_is_failure(500) and default_is_failure(503)
    assert not default_is_failure(404) and not default_is_failure(200)
    r = Route("r", rx("GET", "/"))
    assert r.is_failure(502) and not r.is_failure(429)


def test_response_classes_first_match_decides_then_default():
    r = Route("r", rx("GET", "/"), response_classes=(
        ResponseClassRule(lambda s: s == 503, False),  # "503 here means come back later, not broken"
        ResponseClassRule(lambda s: 400 <= s < 500, True),
    ))
    assert not r.is_failure(503)
    assert r.is_failure(404)
    assert r.is_failure(500)  # unmatched: default rule
    assert not r.is_failure(200)


def test_weighted_split_follows_weights():
    policy = RoutePolicy(dst_overrides=(WeightedAuthority("a:80", 90), WeightedAuthority("b:80", 10),
                                        WeightedAuthority("c:80", 0)))
    rng = random.Random(1)
    counts = collections.Counter(policy.pick_authority(rng) for _ in range(10_000))
    assert 8800 <= counts["a:80"] <= 9200
    assert counts["c:80"] == 0
    assert RoutePolicy().pick_authority(rng) is None
