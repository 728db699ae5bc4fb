"""Route policy from a ServiceProfile: first match wins, classification, timeouts, budget, splits."""

from __future__ import annotations

import collections
import random

import pytest

from meshctl_proxy.policy.service_profile import ProfileError
from meshctl_proxy.policy.route_policy import DEFAULT_ROUTE_NAME, EMPTY_POLICY, compile_profile, route_timeout


def profile(spec: dict) -> dict:
    return {"apiVersion": "meshctl.io/v1alpha2", "kind": "ServiceProfile",
            "metadata": {"name": "books.shop.svc.cluster.local", "namespace": "shop"}, "spec": spec}


BOOKS = profile({
    "routes": [
        {"name": "GET /books/{id}", "condition": {"method": "GET", "pathRegex": "/books/[^/]+"},
         "isRetryable": True, "timeout": "250ms"},
        {"name": "GET /books/special", "condition": {"method": "GET", "pathRegex": "/books/special"}},
        {"name": "POST /books", "condition": {"method": "POST", "pathRegex": "/books"},
         "responseClasses": [
             {"condition": {"status": {"min": 503, "max": 503}}, "isFailure": False},
             {"condition": {"status": {"min": 400, "max": 499}}, "isFailure": True}]},
    ],
    "retryBudget": {"retryRatio": 0.5, "minRetriesPerSecond": 3, "ttl": "5s"},
    "dstOverrides": [{"authority": "books-v1.shop.svc.cluster.local:80", "weight": "900m"},
                     {"authority": "books-v2.shop.svc.cluster.local:80", "weight": "100m"},
                     {"authority": "books-v3.shop.svc.cluster.local:80", "weight": 0}],
})


def test_first_match_wins_whole_path_and_unmatched_goes_to_default():
    policy = compile_profile(BOOKS)
    assert policy.match("GET", "/books/special").name == "GET /books/{id}"
    assert policy.match("GET", "/books/a/b").name == DEFAULT_ROUTE_NAME  # whole-path regex
    assert policy.match("PUT", "/books/1").name == DEFAULT_ROUTE_NAME
    default = policy.match("DELETE", "/")
    assert not default.is_retryable and route_timeout(default) is None


def test_timeouts_retryable_and_budget_come_from_the_profile():
    policy = compile_profile(BOOKS)
    get = policy.match("GET", "/books/1")
    assert get.is_retryable and route_timeout(get) == 0.25
    special = compile_profile(profile({"routes": [BOOKS["spec"]["routes"][1]]})).match("GET", "/books/special")
    assert not special.is_retryable and route_timeout(special) == 10.0  # Linkerd's default route timeout
    assert (policy.budget.retry_ratio, policy.budget.min_retries_per_second, policy.budget.ttl) == (0.5, 3, 5.0)
    assert policy.budget.make().balance(0.0) == 15
    assert EMPTY_POLICY.budget.make().balance(0.0) == 100  # Linkerd defaults 0.2 / 10 / 10s


def test_classification_default_5xx_and_response_classes_first_match():
    policy = compile_profile(BOOKS)
    get = policy.match("GET", "/books/1")
    assert get.is_failure(500) and get.is_failure(503) and not get.is_failure(404)
    post = policy.match("POST", "/books")
    assert not post.is_failure(503)  # first class: 503 is not a failure here
    assert post.is_failure(404)
    assert post.is_failure(500)  # no class matches: default rule
    assert not post.is_failure(201)
    assert policy.match("GET", "/").is_failure(502)  # default route, default classifier


def test_weighted_split_follows_weights():
    policy = compile_profile(BOOKS)
    rng = random.Random(1)
    counts = collections.Counter(policy.pick_authority(rng) for _ in range(10_000))
    assert 8800 <= counts["books-v1.shop.svc.cluster.local:80"] <= 9200
    assert counts["books-v3.shop.svc.cluster.local:80"] == 0
    assert EMPTY_POLICY.pick_authority(rng) is None
    assert compile_profile(None) is EMPTY_POLICY


def test_a_bad_profile_is_refused_by_the_model():
    with pytest.raises(ProfileError, match="pathRegex"):
        compile_profile(profile({"routes": [{"name": "x", "condition": {"pathRegex": "("}}]}))
