"""The OpenAPI core and the YAML emitter: properties that must hold for any input."""

from __future__ import annotations

import json
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshctl.profiles import openapi, text
from meshctl_proxy.policy.service_profile import ServiceProfile

# --- pathRegex: matches its own template's paths, and no other route's -------------------

# Literal text may hold every regex metacharacter; a segment is literal text,
# a {param}, or both mixed ("{name}.json").
LITERAL = st.text(alphabet=string.ascii_lowercase + ".+*?()|[]^$\\-~ #&", min_size=1, max_size=6)
PIECE = st.one_of(LITERAL, st.just(None))  # None: a parameter
SEGMENT = st.lists(PIECE, min_size=1, max_size=3).filter(
    lambda ps: all(not (a is None and b is None) for a, b in zip(ps, ps[1:])))  # no "{a}{b}"
TEMPLATE = st.lists(SEGMENT, min_size=1, max_size=5)
# Parameter values: anything but '/', including metacharacters and the empty string.
VALUE = st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), max_size=8)


def render(template) -> str:
    n = 0
    out = []
    for segment in template:
        parts = []
        for piece in segment:
            if piece is None:
                parts.append("{p%d}" % n)
                n += 1
            else:
                parts.append(piece)
        out.append("".join(parts))
    return "/" + "/".join(out)


def instantiate(template, draw) -> str:
    return "/" + "/".join("".join(draw(VALUE) if p is None else p for p in seg) for seg in template)


def covers(template, path: str) -> bool:
    """Reference matcher, independent of regexes: does *path* fit *template*, segment by segment?"""
    segments = path[1:].split("/")
    if len(segments) != len(template):
        return False
    return all(_glob(seg_t, seg_p) for seg_t, seg_p in zip(template, segments))


def _glob(pieces, s: str) -> bool:
    if not pieces:
        return s == ""
    head, rest = pieces[0], pieces[1:]
    if head is None:
        return any(_glob(rest, s[i:]) for i in range(len(s) + 1))
    return s.startswith(head) and _glob(rest, s[len(head):])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEMPLATE, min_size=1, max_size=6, unique_by=render), st.data())
def test_path_regex_matches_its_template_and_no_other_route(templates, data):
    spec = {"openapi": "3.0.3", "paths": {render(t): {"get": {"responses": {"200": {}}}} for t in templates}}
    profile = openapi.from_openapi(spec, name="x.default.svc.cluster.local", namespace="default")
    by_name = {r.name: r for r in profile.routes}
    for template in templates:
        route = by_name[f"GET {render(template)}"]
        own = instantiate(template, data.draw)
        assert route.matches("GET", own), (route.condition.path_regex, own)
        assert not route.matches("POST", own)
        for other in templates:
            if other is template:
                continue
            path = instantiate(other, data.draw)
            # A match on another route's path is only right when that path
            # really fits this template too (a {param} where the other has text).
            assert route.matches("GET", path) == covers(template, path), (render(template), path)


def test_path_regex_examples():
    assert openapi.path_regex("/api/products/{productId}") == "/api/products/[^/]*"
    assert openapi.path_regex("/files/{name}.json") == r"/files/[^/]*\.json"
    assert openapi.path_regex("/a+b/(c)/{x}{y}") == r"/a\+b/\(c\)/[^/]*[^/]*"
    assert openapi.path_regex("/v1/x$|^y") == r"/v1/x\$\|\^y"


# --- the emitter: what it writes, YAML reads back unchanged ---------------------------------

SCALAR = st.one_of(
    st.text(max_size=20), st.sampled_from(["yes", "No", "ON", "null", "~", "1e3", "0x1f", "1:20", "- a", "a: b",
                                           "a #b", "#c", "", " ", "10s", "1m30s", "100ms", "{x}", "[y]", "@z", "%"]),
    st.integers(-2**40, 2**40), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
TREE = st.recursive(SCALAR, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(TREE)
def test_emitter_round_trips_through_pyyaml(tree):
    assert yaml.safe_load(text.dump(tree)) == tree


def test_emitter_writes_what_pyyaml_writes_for_profiles():
    from conftest import ROOT

    for path in (ROOT / "tests" / "golden" / "profile").glob("*.yaml"):
        obj = yaml.safe_load(path.read_text())
        if path.name == "template.yaml":
            continue
        expected = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=10_000)
        # PyYAML quotes Go durations ('2s'); we leave them plain.  Everything else is identical.
        assert text.dump(obj) == expected.replace("'", ""), path.name
        assert ServiceProfile.from_dict(obj).to_dict() == obj


# --- base paths and extensions -------------------------------------------------------------------

def _routes(spec) -> list[str]:
    return [r.name for r in openapi.from_openapi(spec, name="x.default.svc.cluster.local", namespace="default").routes]


def test_base_path_rules():
    paths = {"/a": {"get": {"responses": {}}}}
    assert _routes({"swagger": "2.0", "basePath": "/v1/", "paths": paths}) == ["GET /v1/a"]
    assert _routes({"swagger": "2.0", "paths": paths}) == ["GET /a"]
    assert _routes({"openapi": "3.0.0", "paths": paths}) == ["GET /a"]
    assert _routes({"openapi": "3.0.0", "servers": [{"url": "/"}], "paths": paths}) == ["GET /a"]
    assert _routes({"openapi": "3.0.0", "servers": [{"url": "v1/"}], "paths": paths}) == ["GET /v1/a"]
    assert _routes({"openapi": "3.0.0", "servers": [{"url": "https://h:{p}/{b}", "variables": {
        "p": {"default": "443"}, "b": {"default": "x/y"}}}], "paths": paths}) == ["GET /x/y/a"]
    # The most specific servers list wins: operation, then path item, then root.
    spec = {"openapi": "3.1.0", "servers": [{"url": "/root"}], "paths": {
        "/a": {"servers": [{"url": "/item"}], "get": {"responses": {}},
               "put": {"servers": [{"url": "http://h/op"}], "responses": {}}},
        "/b": {"get": {"responses": {}}}}}
    assert _routes(spec) == ["GET /item/a", "PUT /op/a", "GET /root/b"]


def test_vendor_extensions_meshctl_wins():
    op = {"responses": {}, "x-linkerd-retryable": True, "x-linkerd-timeout": "1s", "x-meshctl-timeout": "2s"}
    route = openapi.from_openapi({"swagger": "2.0", "paths": {"/a": {"get": op}}},
                                 name="x.y.svc.cluster.local", namespace="y").routes[0]
    assert (route.is_retryable, route.timeout, route.timeout_seconds) == (True, "2s", 2.0)


# --- what linkerd accepts, and every problem at once ---------------------------------------------

def test_openapi_30_without_info_or_responses_is_accepted_as_linkerd_accepts_it():
    # Linkerd reads only what routes need (its own tests' specs have neither).
    spec = b'openapi: 3.0.0\npaths:\n  /books:\n    get: {}\n    post: {}\n'
    doc = openapi.load_spec(spec, source="books.yaml")
    profile = openapi.from_openapi(doc, name="x.default.svc.cluster.local", namespace="default")
    assert [r.name for r in profile.routes] == ["GET /books", "POST /books"]
    assert all(r.response_classes == () for r in profile.routes)


def test_refs_to_other_files_that_routes_do_not_need_are_accepted():
    spec = json.dumps({"swagger": "2.0", "info": {"title": "t", "version": "1"}, "paths": {"/pets": {"get": {
        "parameters": [{"$ref": "parameters.yaml#/limit"}],
        "responses": {"200": {"$ref": "../common/Pets.yaml"}, "default": {"$ref": "Error.yaml"}}}}}}).encode()
    doc = openapi.load_spec(spec, source="pets.json")
    route, = openapi.from_openapi(doc, name="x.default.svc.cluster.local", namespace="default").routes
    assert route.name == "GET /pets" and [c.condition.status.min for c in route.response_classes] == [200]


def test_every_problem_is_reported_at_once_or_collected():
    spec = json.dumps({"openapi": "3.0.3", "info": {"title": "t"}, "paths": {
        "/a": {"get": {"x-linkerd-timeout": "soon", "responses": {"200": {"$ref": "#/nope"}}}},
        "/b": {"$ref": "other.yaml#/b"},
        "/c": {"post": {"x-meshctl-retryable": "yes"}}}}).encode()
    problems: list[str] = []
    doc = openapi.load_spec(spec, source="s.json", problems=problems)
    profile = openapi.from_openapi(doc, name="x.default.svc.cluster.local", namespace="default", source="s.json",
                                   problems=problems)
    assert [r.name for r in profile.routes] == ["GET /a", "POST /c"]  # /b cannot be read: left out
    assert profile.routes[0].timeout is None and profile.routes[1].is_retryable is False
    text = "\n".join(problems)
    for words in ("paths./a.get.responses.200.$ref: '#/nope' does not resolve",
                  "paths./b.$ref: 'other.yaml#/b' points outside this file",
                  "invalid OpenAPI 3.0 spec at info: 'version' is a required property",
                  "paths./a.get.x-linkerd-timeout: expected a duration",
                  "paths./c.post.x-meshctl-retryable: expected true or false, got 'yes'"):
        assert words in text, text
    with pytest.raises(openapi.SpecError) as raised:
        openapi.from_openapi(openapi.load_spec(spec, source="s.json", problems=[]), name="x", namespace="d",
                             source="s.json")
    assert len(raised.value.problems) == 2  # the extensions; load_spec's were collected above
    with pytest.raises(openapi.SpecError) as raised:
        openapi.load_spec(spec, source="s.json")
    assert str(raised.value).startswith("s.json: 3 problems with the spec:\n  ")
