"""The ServiceProfile model (meshctl_proxy.policy.service_profile): parsing, validation, matching, classification."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from conftest import SRC
from meshctl_proxy.policy.service_profile import (
    DEFAULT_RETRY_BUDGET, DstOverride, ProfileError, RequestMatch, ResponseClass, ResponseMatch, Route,
    ServiceProfile, StatusRange, is_failure,
)

GOOD = {
    "apiVersion": "meshctl.io/v1alpha2",
    "kind": "ServiceProfile",
    "metadata": {"name": "price-api-svc.shop.svc.cluster.local", "namespace": "shop"},
    "spec": {
        "routes": [
            {
                "name": "GET /api/prices",
                "condition": {"method": "GET", "pathRegex": "/api/prices"},
                "responseClasses": [
                    {"condition": {"status": {"min": 404}}, "isFailure": True},
                    {"condition": {"status": {"min": 500, "max": 599}, "not": {"status": {"min": 500, "max": 503}}},
                     "isFailure": True},
                    {"condition": {"status": {"min": 500, "max": 599}}},
                ],
                "isRetryable": True,
                "timeout": "250ms",
            },
            {
                "name": "writes",
                "condition": {"any": [{"method": "POST"}, {"method": "PUT"}],
                              "not": {"pathRegex": "/admin/.*"}},
            },
        ],
        "retryBudget": {"retryRatio": 0.5, "minRetriesPerSecond": 3, "ttl": "1m30s"},
        "dstOverrides": [{"authority": "price-api-v2.shop.svc.cluster.local:8080", "weight": "500m"},
                         {"authority": "price-api-svc.shop.svc.cluster.local:8080", "weight": 1}],
    },
}


def problems_of(obj) -> list[str]:
    with pytest.raises(ProfileError) as info:
        ServiceProfile.from_dict(obj)
    return [str(p) for p in info.value.problems]


def test_round_trip_is_identity():
    profile = ServiceProfile.from_dict(GOOD)
    assert profile.to_dict() == GOOD
    assert ServiceProfile.from_dict(profile.to_dict()) == profile


def test_parsed_values():
    p = ServiceProfile.from_dict(GOOD)
    route = p.routes[0]
    assert route.timeout_seconds == 0.25
    assert route.is_retryable and not p.routes[1].is_retryable
    assert p.routes[1].timeout_seconds is None
    assert p.retry_budget.ttl_seconds == 90.0
    assert [d.weight_milli for d in p.dst_overrides] == [500, 1000]


def test_retry_budget_defaults():
    assert (DEFAULT_RETRY_BUDGET.retry_ratio, DEFAULT_RETRY_BUDGET.min_retries_per_second,
            DEFAULT_RETRY_BUDGET.ttl_seconds) == (0.2, 10, 10.0)
    obj = copy.deepcopy(GOOD)
    obj["spec"]["retryBudget"] = {}
    assert ServiceProfile.from_dict(obj).retry_budget == DEFAULT_RETRY_BUDGET


def test_route_matching_is_whole_path_and_first_match_wins():
    p = ServiceProfile.from_dict(GOOD)
    assert p.route_for("GET", "/api/prices").name == "GET /api/prices"
    # fullmatch: neither a longer path nor a prefix belongs to the route.
    assert p.route_for("GET", "/api/prices/1") is None
    assert p.route_for("GET", "/api/price") is None
    assert p.route_for("get", "/api/prices") is None  # methods are case-sensitive
    assert p.route_for("POST", "/api/prices").name == "writes"
    assert p.route_for("PUT", "/x").name == "writes"
    assert p.route_for("PUT", "/admin/users") is None  # `not`
    assert p.route_for("DELETE", "/x") is None


def test_request_match_fields_and_combinators():
    m = RequestMatch(method="GET", path_regex=r"/a/[^/]*")
    assert m.matches("GET", "/a/1") and not m.matches("POST", "/a/1") and not m.matches("GET", "/a/1/b")
    assert RequestMatch(all=(RequestMatch(method="GET"), RequestMatch(path_regex="/x"))).matches("GET", "/x")
    assert not RequestMatch(all=(RequestMatch(method="GET"), RequestMatch(path_regex="/x"))).matches("GET", "/y")
    assert RequestMatch(any=()).matches("GET", "/") is False
    assert RequestMatch(not_=RequestMatch(method="GET")).matches("POST", "/")


def test_classification():
    route = ServiceProfile.from_dict(GOOD).routes[0]
    assert route.is_failure(404)  # a single bound matches that one code
    assert not route.is_failure(405)
    assert route.is_failure(504)  # 5xx but not <= 503
    assert not route.is_failure(502)  # first match wins: the third class says success
    assert not route.is_failure(200)
    # No classes: Linkerd's default, 5xx fails.
    assert is_failure(500) and is_failure(599) and not is_failure(499) and not is_failure(200)
    only_max = ResponseClass(ResponseMatch(status=StatusRange(max=418)), is_failure=True)
    assert only_max.matches(418) and not only_max.matches(417)


def test_every_problem_is_reported_with_its_path():
    bad = {
        "apiVersion": "linkerd.io/v1alpha2",
        "kind": "ServiceProfile",
        "metadata": {"name": "Bad_Name"},
        "spec": {
            "routes": [
                {"name": "r", "condition": {"pathRegex": "(", "methd": "GET"}, "timeout": "10 seconds",
                 "responseClasses": [{"condition": {"status": {"min": 600, "max": 99}}},
                                     {"condition": {"status": {"min": 503, "max": 500}}},
                                     {"condition": {}, "isFailure": "yes"}]},
                {"condition": {"method": "GET"}},
                {"name": "s", "condition": {}},
            ],
            "retryBudget": {"retryRatio": -1, "ttl": "0s", "extra": 1},
            "dstOverrides": [{"authority": "", "weight": "lots"}],
            "opaquePorts": [],
        },
    }
    got = problems_of(bad)
    expected = [
        "apiVersion: expected meshctl.io/v1alpha2",
        "metadata.name: 'Bad_Name' is not a valid DNS subdomain",
        "spec.opaquePorts: unknown field",
        "spec.routes[0].condition.methd: unknown field",
        "spec.routes[0].condition.pathRegex: bad regular expression '('",
        "spec.routes[0].responseClasses[0].condition.status.min: status 600 out of range 100..599",
        "spec.routes[0].responseClasses[0].condition.status.max: status 99 out of range 100..599",
        "spec.routes[0].responseClasses[1].condition.status: min 503 is greater than max 500",
        "spec.routes[0].responseClasses[2].condition: a response match must set",
        "spec.routes[0].responseClasses[2].isFailure: expected true or false",
        "spec.routes[0].timeout: expected a duration",
        "spec.routes[1].name: missing",
        "spec.routes[2].condition: a request match must set",
        "spec.retryBudget.extra: unknown field",
        "spec.retryBudget.retryRatio: expected a number >= 0",
        "spec.retryBudget.ttl: must be greater than 0",
        "spec.dstOverrides[0].authority: must not be empty",
        "spec.dstOverrides[0].weight: expected a quantity",
    ]
    for want in expected:
        assert any(g.startswith(want) for g in got), (want, got)
    assert len(got) == len(expected), got


def test_linkerd_hint_and_not_an_object():
    assert "change the group to meshctl.io" in problems_of({**GOOD, "apiVersion": "linkerd.io/v1alpha2"})[0]
    assert problems_of([1]) == ["expected an object, got a list"]


def test_server_populated_metadata_is_accepted():
    obj = copy.deepcopy(GOOD)
    obj["metadata"].update(uid="x", resourceVersion="1", labels={"a": "b"}, annotations={"c": "d"})
    p = ServiceProfile.from_dict(obj)
    assert p.labels == (("a", "b"),) and p.annotations == (("c", "d"),)
    assert "uid" not in p.to_dict()["metadata"]


def test_regex_compiled_once_and_models_are_frozen():
    m = RequestMatch(path_regex="/a")
    assert m._path_re is not None and m._path_re.pattern == "/a"
    with pytest.raises(AttributeError):
        m.method = "GET"  # type: ignore[misc]
    assert Route("r", m, timeout="1s") == Route("r", m, timeout="1s")
    assert DstOverride("a", 2).weight_milli == 2000


def test_import_is_cheap_and_standalone():
    code = ("import sys; import meshctl_proxy.policy.service_profile; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('meshctl', 'typer', 'rich', 'kubernetes', 'yaml', 'ruamel')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC)}, check=True).stdout
    assert out.strip() == "[]"
