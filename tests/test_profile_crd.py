"""The ServiceProfile CRD: a valid Kubernetes object, a structural schema, and in step with the model.

kubernetes-validate bundles the Kubernetes JSON schemas for 1.25 up to its own
version (offline); the CRD is checked against every bundled version in strict
mode (unknown fields rejected).  Profiles are checked against the CRD's
openAPIV3Schema the way the API server does with kubectl's default
`--validate=strict`: unknown fields rejected, value validations applied, and
the x-kubernetes-validations CEL rules evaluated with cel-python.
"""

from __future__ import annotations

import copy
import json

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from meshctl_proxy.policy.service_profile import ProfileError, ServiceProfile

CRD_PATH = ROOT / "manifests" / "crds" / "serviceprofile.yaml"
GOLDEN = ROOT / "tests" / "golden" / "profile"


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def schema(crd) -> dict:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_shipped_as_package_data():
    assert (ROOT / "src" / "meshctl" / "manifests" / "crds" / "serviceprofile.yaml").resolve() == CRD_PATH.resolve()


def test_names(crd):
    assert crd["metadata"]["name"] == "serviceprofiles.meshctl.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("meshctl.io", "Namespaced")
    assert spec["names"] == {"plural": "serviceprofiles", "singular": "serviceprofile", "kind": "ServiceProfile",
                             "listKind": "ServiceProfileList", "shortNames": ["sp"]}
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [("v1alpha2", True, True)]


@pytest.mark.parametrize("k8s_version", kubernetes_validate.utils.all_versions())
def test_crd_is_valid_for_every_bundled_kubernetes_version(crd, k8s_version):
    expected = kubernetes_validate.utils.major_minor(k8s_version)
    assert kubernetes_validate.validate(crd, k8s_version, strict=True) == expected


def test_strict_validation_catches_a_broken_crd(crd):
    broken = copy.deepcopy(crd)
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["propertiez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.utils.latest_version(), strict=True)


def _nodes(node: dict, path: str = ""):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")


def test_schema_is_structural(schema):
    # The API server's rules for structural schemas (apiextensions-apiserver,
    # pkg/apiserver/schema/validation.go): every node has a type unless it is
    # int-or-string or keeps unknown fields; `type` inside anyOf only in the
    # exact int-or-string pattern; no $ref.
    assert "$ref" not in json.dumps(schema)
    for path, node in _nodes(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        for junctor in ("allOf", "oneOf", "not"):
            assert junctor not in node, path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path


def _strict(node: dict) -> dict:
    """The schema as the API server applies it with strict field validation: unknown fields are errors."""
    node = copy.deepcopy(node)
    for _, n in _nodes(node):
        if n.get("type") == "object" and not n.get("x-kubernetes-preserve-unknown-fields") and "properties" in n:
            n["additionalProperties"] = False
    return node


def _cel_failures(schema: dict, obj, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule where the object has a value for its node."""
    failures = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", ()):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(obj)}):
            failures.append(f"{path}: {rule['message']}")
    if isinstance(obj, dict):
        for key, child in (schema.get("properties") or {}).items():
            if key in obj:
                failures += _cel_failures(child, obj[key], f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            failures += _cel_failures(schema["items"], item, f"{path}[{i}]")
    return failures


def crd_problems(schema: dict, obj) -> list[str]:
    validator = jsonschema.Draft4Validator(_strict(schema))
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    return found + _cel_failures(schema, obj)


def _golden_profiles():
    for path in sorted(GOLDEN.iterdir()):
        if path.is_file():
            yield path.name, (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text())


@pytest.mark.parametrize("name,obj", list(_golden_profiles()))
def test_every_generated_profile_fits_the_crd(schema, name, obj):
    assert crd_problems(schema, obj) == []


def test_the_template_uncommented_fits_the_crd_and_the_model(schema):
    # The commented lines of the template are YAML too: uncommented, every
    # field it explains must be accepted by both the CRD and the model.
    import re

    lines = []
    for line in (GOLDEN / "template.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)# (.*)$", line)
        if m and re.match(r"^\s*(- )?[A-Za-z]+:( |$)|^\s*- |^\s*#", m.group(2)):
            line = m.group(1) + m.group(2)
        lines.append(line)
    obj = yaml.safe_load("\n".join(lines))
    spec = obj["spec"]
    assert set(spec) == {"routes", "retryBudget", "dstOverrides"}
    route = spec["routes"][0]
    assert {"isRetryable", "timeout"} <= set(route)
    assert {"all", "any", "not"} <= set(route["condition"])
    assert crd_problems(schema, obj) == []
    profile = ServiceProfile.from_dict(obj)
    assert profile.routes[0].timeout_seconds == 0.3 and profile.retry_budget.ttl_seconds == 10


BASE = yaml.safe_load((GOLDEN / "product-gateway-api.yaml").read_text())


def _with(mutate) -> dict:
    obj = copy.deepcopy(BASE)
    mutate(obj)
    return obj


def _route(obj) -> dict:
    return obj["spec"]["routes"][0]


# What the model rejects and the CRD can express: both must reject.  (A bad
# regular expression cannot be expressed in a CRD; the model alone catches it.)
REJECTED_BY_BOTH = {
    "status above 599": lambda o: _route(o)["responseClasses"][0]["condition"]["status"].update(min=600, max=600),
    "status below 100": lambda o: _route(o)["responseClasses"][0]["condition"]["status"].update(min=99),
    "min greater than max (CEL)": lambda o: _route(o)["responseClasses"][0]["condition"]["status"].update(min=503, max=500),
    "empty status": lambda o: _route(o)["responseClasses"][0]["condition"].update(status={}),
    "bad timeout": lambda o: _route(o).update(timeout="2 seconds"),
    "bad ttl": lambda o: o["spec"].update(retryBudget={"ttl": "10"}),
    "negative retry ratio": lambda o: o["spec"].update(retryBudget={"retryRatio": -0.1}),
    "unknown route field": lambda o: _route(o).update(retries=3),
    "unknown spec field": lambda o: o["spec"].update(opaquePorts=[80]),
    "unknown condition field": lambda o: _route(o)["condition"].update(path="/x"),
    "empty condition": lambda o: _route(o).update(condition={}),
    "route without name": lambda o: _route(o).pop("name"),
    "route without condition": lambda o: _route(o).pop("condition"),
    "method not a token": lambda o: _route(o)["condition"].update(method="GET /x"),
    "isRetryable not a boolean": lambda o: _route(o).update(isRetryable="yes"),
    "not as a list (Linkerd's CRD quirk)": lambda o: _route(o)["condition"].update({"not": [{"method": "POST"}]}),
    "dstOverride without weight": lambda o: o["spec"].update(dstOverrides=[{"authority": "a:80"}]),
    "dstOverride bad weight": lambda o: o["spec"].update(dstOverrides=[{"authority": "a:80", "weight": "lots"}]),
}


@pytest.mark.parametrize("case", sorted(REJECTED_BY_BOTH))
def test_crd_rejects_what_the_model_rejects(schema, case):
    obj = _with(REJECTED_BY_BOTH[case])
    with pytest.raises(ProfileError):
        ServiceProfile.from_dict(obj)
    assert crd_problems(schema, obj), f"the CRD accepts {case}"


ACCEPTED_BY_BOTH = {
    "as generated": lambda o: None,
    "single-bound status": lambda o: _route(o)["responseClasses"][0]["condition"].update(status={"max": 404}),
    "nested combinators": lambda o: _route(o).update(condition={
        "any": [{"all": [{"method": "GET"}, {"not": {"pathRegex": "/x"}}]}], "not": {"method": "DELETE"}}),
    "full retry budget": lambda o: o["spec"].update(retryBudget={"retryRatio": 0.5, "minRetriesPerSecond": 0,
                                                                 "ttl": "1m30s"}),
    "traffic split": lambda o: o["spec"].update(dstOverrides=[{"authority": "a:80", "weight": "900m"},
                                                              {"authority": "b:80", "weight": 1}]),
    "server-populated metadata": lambda o: o["metadata"].update(uid="1", resourceVersion="7", labels={"a": "b"}),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED_BY_BOTH))
def test_crd_accepts_what_the_model_accepts(schema, case):
    obj = _with(ACCEPTED_BY_BOTH[case])
    ServiceProfile.from_dict(obj)
    assert crd_problems(schema, obj) == []
