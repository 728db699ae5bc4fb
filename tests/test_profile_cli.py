"""`meshctl profile` end to end: golden output for each input form, and bad input.

Regenerate the golden files with `pytest tests/test_profile_cli.py --update-golden` and review the diff.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SRC, run_cli
from meshctl_proxy.policy.service_profile import ServiceProfile

GOLDEN = ROOT / "tests" / "golden" / "profile"
INPUT = GOLDEN / "input"
SAMPLES = ROOT / "samples" / "swagger"
OFFLINE = ["--ignore-cluster"]

CASES = {
    # golden file name: CLI arguments after `profile`
    "product-gateway-api.yaml": ["--open-api", str(SAMPLES / "product-gateway-api.json"), "product-gateway-api-svc",
                                 "-n", "shop", *OFFLINE],
    "product-api.yaml": ["--open-api", str(SAMPLES / "product-api.json"), "product-api-svc", "-n", "shop", *OFFLINE],
    "price-api.yaml": ["--open-api", str(SAMPLES / "price-api.json"), "price-api-svc", "-n", "shop", *OFFLINE],
    "price-api.openapi3.yaml": ["--open-api", str(SAMPLES / "price-api.openapi3.yaml"), "price-api-svc", "-n", "shop",
                                *OFFLINE],
    "catalog.openapi31.yaml": ["--open-api", str(INPUT / "catalog.openapi31.yaml"), "catalog", "-n", "shop", *OFFLINE],
    "books.swagger2.json": ["--open-api", str(INPUT / "books.swagger2.yaml"), "books", "-o", "json",
                            "--cluster-domain", "corp.example"],
    "shop.proto.yaml": ["--proto", str(INPUT / "shop.proto"), "shop-grpc", "-n", "shop", *OFFLINE],
    "template.yaml": ["--template", "web", "-n", "shop", *OFFLINE],
}


def _load(text: str, name: str):
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


@pytest.mark.parametrize("golden", sorted(CASES))
def test_golden(golden, update_golden):
    r = run_cli("profile", *CASES[golden])
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    path = GOLDEN / golden
    if update_golden:
        path.write_text(r.stdout)
    assert r.stdout == path.read_text(), f"{golden} changed: rerun with --update-golden and review the diff"
    # What we emit, the model accepts unchanged.
    obj = _load(r.stdout, golden)
    assert ServiceProfile.from_dict(obj).to_dict() == obj


def test_golden_files_have_cases():
    on_disk = {p.name for p in GOLDEN.iterdir() if p.is_file()}
    assert on_disk == set(CASES), "a golden file without a case (or the reverse)"


def test_stdin_and_file_give_the_same_output():
    spec = SAMPLES / "price-api.openapi3.yaml"
    from_file = run_cli("profile", "--open-api", str(spec), "price-api-svc", "-n", "shop", *OFFLINE)
    from_stdin = run_cli("profile", "--open-api", "-", "price-api-svc", "-n", "shop", *OFFLINE,
                         input=spec.read_bytes())
    assert from_file.returncode == from_stdin.returncode == 0
    assert from_file.stdout == from_stdin.stdout


def test_output_is_deterministic_whatever_the_key_order(tmp_path):
    spec = yaml.safe_load((INPUT / "catalog.openapi31.yaml").read_text())
    spec["paths"] = dict(reversed(list(spec["paths"].items())))
    for item in spec["paths"].values():
        for key in list(item):
            item[key] = item.pop(key)  # moves each key to the end: reverses method order
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps(spec))
    r = run_cli("profile", "--open-api", str(shuffled), "catalog", "-n", "shop", *OFFLINE)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (GOLDEN / "catalog.openapi31.yaml").read_text()


def test_cluster_domain_needs_a_cluster_or_a_flag():
    r = run_cli("profile", "--template", "web", env={"KUBECONFIG": "/nonexistent/kubeconfig"})
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("Error: cannot read the cluster domain")
    assert "--ignore-cluster" in r.stderr and "--cluster-domain" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- bad input: one line on stderr naming the problem, exit 1, nothing on stdout ---------

def _spec(**paths) -> str:
    return json.dumps({"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths})


OK_RESPONSES = {"responses": {"200": {"description": "ok"}}}

BAD = {
    "missing file": (["--open-api", "/nonexistent/spec.json", "svc"], None,
                     "cannot read /nonexistent/spec.json: No such file or directory"),
    "directory": (["--open-api", "/", "svc"], None, "cannot read /: Is a directory"),
    "not yaml": (["--open-api", "-", "svc"], "a: [1, 2\nb: 3\n", "<stdin>: not valid YAML or JSON: line"),
    "bad json": (["--open-api", "-", "svc"], '{"openapi": 3,}', "<stdin>: not valid JSON: line 1 column 15"),
    "binary": (["--open-api", "-", "svc"], b"\xff\xfe\x00junk", "<stdin>: not UTF-8 text"),
    "empty": (["--open-api", "-", "svc"], "", "<stdin>: empty input"),
    "a list": (["--open-api", "-", "svc"], "[1, 2]", "not an OpenAPI document (the top level is a list"),
    "not openapi": (["--open-api", "-", "svc"], "kind: Deployment\n", "not an OpenAPI document (no 'swagger"),
    "openapi 4": (["--open-api", "-", "svc"], "openapi: 4.0.0\n", "openapi: '4.0.0' is not supported"),
    "invalid spec": (["--open-api", "-", "svc"], _spec(**{"/a": {"get": {"responses": {"200": {"descr": "x"}}}}}),
                     "invalid OpenAPI 3.0 spec at paths./a.get.responses.200: 'description' is a required property"),
    "undeclared path param": (["--open-api", "-", "svc"], _spec(**{"/a/{id}": {"get": OK_RESPONSES}}),
                              "invalid OpenAPI 3.0 spec: Path parameter 'id' for 'get' operation in '/a/{id}' was not resolved"),
    "no paths": (["--open-api", "-", "svc"], _spec(), "the spec has no paths"),
    "no operations": (["--open-api", "-", "svc"], _spec(**{"/a": {"summary": "nothing"}}), "the spec has no operations"),
    "ref cycle": (["--open-api", "-", "svc"], json.dumps({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "paths": {"/a": {"get": {"responses": {"200": {"$ref": "#/components/responses/A"}}}}},
        "components": {"responses": {"A": {"$ref": "#/components/responses/B"},
                                     "B": {"$ref": "#/components/responses/A"}}}}),
        "$ref cycle: #/components/responses/A -> #/components/responses/B -> #/components/responses/A"),
    "dangling ref": (["--open-api", "-", "svc"], _spec(**{"/a": {"get": {"responses": {"200": {"$ref": "#/nope"}}}}}),
                     "paths./a.get.responses.200.$ref: '#/nope' does not resolve"),
    "remote path item": (["--open-api", "-", "svc", *OFFLINE], _spec(**{"/a": {"$ref": "http://127.0.0.1:9/x.json"}}),
                         "paths./a.$ref: 'http://127.0.0.1:9/x.json' points outside this file, so the operations"),
    "bad extension": (["--open-api", "-", "svc"], _spec(**{"/a": {"get": {**OK_RESPONSES, "x-meshctl-timeout": "soon"}}}),
                      "paths./a.get.x-meshctl-timeout: expected a duration"),
    "bad retryable": (["--open-api", "-", "svc"], _spec(**{"/a": {"get": {**OK_RESPONSES, "x-linkerd-retryable": "yes"}}}),
                      "paths./a.get.x-linkerd-retryable: expected true or false, got 'yes'"),
    "bad service": (["--template", "Price_API", *OFFLINE], None, "service name 'Price_API' is not a DNS-1035 label"),
    "service starting with a digit": (["--template", "1api", *OFFLINE], None, "service name '1api' is not a DNS-1035"),
    "bad namespace": (["--template", "web", "-n", "Shop", *OFFLINE], None, "namespace 'Shop' is not a DNS-1123 label"),
    "bad domain": (["--template", "web", "--cluster-domain", "a..b"], None, "cluster domain 'a..b' is not a DNS subdomain"),
    "no source": (["svc"], None, "give exactly one of --open-api FILE, --proto FILE, --template or --validate"),
    "two sources": (["--template", "--proto", "x.proto", "svc"], None, "(got --proto, --template)"),
    "no service": (["--template", *OFFLINE], None, "expected one SERVICE, got 0 arguments"),
    "proto syntax": (["--proto", "-", "svc", *OFFLINE], "service S {\n  rpc A(B) returns C;\n}\n",
                     "<stdin>:2: expected '(', got 'C'"),
    "proto without rpcs": (["--proto", "-", "svc", *OFFLINE], 'syntax = "proto3";\nmessage M {}\n',
                           "<stdin>: no service with an rpc"),
}


# The command line itself is wrong: exit 2 (usage error), every other failure exit 1.
USAGE = {"bad service", "service starting with a digit", "bad namespace", "bad domain", "no source", "two sources",
         "no service"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case):
    args, stdin, message = BAD[case]
    r = run_cli("profile", *args, input=stdin if stdin is not None else b"")
    assert r.returncode == (2 if case in USAGE else 1), (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    if case == "remote path item":  # two problems: the $ref, and so no operation at all
        assert lines[0] == "Error: <stdin>: 2 problems with the spec:" and message in lines[1], r.stderr
        return
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]


def test_yaml_alias_bomb_fails_fast_with_bounded_memory():
    # "Billion laughs": 10^9 nodes once aliases are expanded, a few hundred bytes on disk.
    lines = ['openapi: 3.0.3', 'info: {title: t, version: "1"}', 'a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["paths: {}"]
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "sys.argv = ['meshctl', 'profile', '--open-api', '-', 'svc', '--ignore-cluster']; "
            "from meshctl.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], input="\n".join(lines).encode(), capture_output=True,
                          env={"PYTHONPATH": str(SRC), "NO_COLOR": "1"}, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"nodes (after expanding YAML aliases): too large" in proc.stderr


def test_size_and_depth_limits(monkeypatch):
    from meshctl.errors import InputError
    from meshctl.profiles import openapi, text

    monkeypatch.setattr(text, "MAX_INPUT_BYTES", 1000)
    with pytest.raises(InputError, match="more than the 0 MiB input limit"):
        openapi.load_spec(b" " * 1001, source="big.json")
    monkeypatch.undo()
    deep = "[" * 300 + "]" * 300
    with pytest.raises(InputError, match="nested deeper than 200 levels|nested too deeply"):
        openapi.load_spec(deep.encode(), source="deep.json")


# --- --validate ----------------------------------------------------------------------------

def test_validate_accepts_every_golden_profile():
    files = [str(GOLDEN / name) for name in sorted(CASES)]
    r = run_cli("profile", "--validate", *files)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert r.stderr.count("is valid") == len(files)


def test_validate_reports_every_problem_with_file_document_and_path(tmp_path):
    good = (GOLDEN / "price-api.yaml").read_text()
    bad = good.replace("timeout: 500ms", "timeout: half a second").replace("min: 404", "min: 604") \
        .replace("max: 400", "max: 399").replace("isRetryable: true", "isRetryable: true\n    retries: 3")
    f = tmp_path / "profiles.yaml"
    f.write_text(good + "---\n" + bad + "---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
    r = run_cli("profile", "--validate", str(f))
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[0] == f"{f}: document 1: ServiceProfile price-api-svc.shop.svc.cluster.local is valid (1 route)"
    where = f"Error: {f}: document 2: spec.routes[0]"
    assert lines[1:] == [
        f"{where}.retries: unknown field (expected one of: name, condition, responseClasses, isRetryable, timeout)",
        f"{where}.responseClasses[1].condition.status: min 400 is greater than max 399",
        f"{where}.responseClasses[2].condition.status.min: status 604 out of range 100..599",
        f"{where}.timeout: expected a duration like 100ms, 10s or 1m30s, got 'half a second'",
        f"Error: {f}: document 3: a Service, not a ServiceProfile",
    ]


def test_validate_unreadable_and_bad_regex(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text((GOLDEN / "product-api.yaml").read_text().replace("pathRegex: /api/products/[^/]*",
                                                                   "pathRegex: /api/products/[^/*"))
    r = run_cli("profile", "--validate", str(f), "/nonexistent.yaml")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"Error: {f}: document 1: spec.routes[0].condition.pathRegex: bad regular expression '/api/products/[^/*': "
        "unterminated character set at position 14",
        "Error: cannot read /nonexistent.yaml: No such file or directory",
    ]


# --- start-up: the light paths stay light ------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["profile", "--template", "web", "--ignore-cluster"],
    ["profile", "--proto", str(INPUT / "shop.proto"), "svc", "--ignore-cluster"],
    ["profile", "--validate", str(GOLDEN / "template.yaml")],
])
def test_light_paths_import_no_heavy_modules(args):
    from test_cli_root import _modules_after

    assert _modules_after(args) == set()


def test_ignore_spec_errors_generates_with_a_warning_per_problem():
    spec = json.dumps({"openapi": "3.0.3", "info": {"title": "t"}, "paths": {
        "/a": {"get": {"x-linkerd-timeout": "soon", "responses": {"200": {"description": "ok"}}}}}})
    refused = run_cli("profile", "--open-api", "-", "svc", *OFFLINE, input=spec)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("Error: <stdin>: 2 problems with the spec:\n")
    assert "--ignore-spec-errors generates the profile anyway" in refused.stderr
    r = run_cli("profile", "--open-api", "-", "svc", *OFFLINE, "--ignore-spec-errors", input=spec)
    assert r.returncode == 0, r.stderr
    assert "name: GET /a" in r.stdout and "timeout" not in r.stdout
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("‼ <stdin>: ") for w in warnings)
    r = run_cli("profile", "--proto", str(INPUT / "shop.proto"), "svc", *OFFLINE, "--ignore-spec-errors")
    assert r.returncode == 2 and "--ignore-spec-errors only applies with --open-api" in r.stderr


def test_namespace_comes_from_the_kubeconfig_context_when_n_is_absent(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: a\ncontexts:\n"
                          "- {name: a, context: {cluster: c, user: u, namespace: shop}}\n"
                          "- {name: b, context: {cluster: c, user: u, namespace: other}}\n"
                          "- {name: none, context: {cluster: c, user: u}}\n")
    args = ["profile", "--template", "web", *OFFLINE, "--kubeconfig", str(kubeconfig)]
    for extra, namespace in (([], "shop"), (["--context", "b"], "other"), (["--context", "none"], "default"),
                             (["-n", "mine"], "mine")):
        r = run_cli(*args, *extra)
        assert r.returncode == 0, r.stderr
        assert f"name: web.{namespace}.svc.cluster.local" in r.stdout, (extra, r.stdout[:300])
