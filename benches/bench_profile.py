"""Benchmark: `meshctl profile --open-api` on a generated 2,000-operation spec.

Target (issue 3): under 2 s end to end, as a user runs it (a fresh process).
Baseline, measured side by side in the same run: a fresh process that only
does `json.load` + openapi-spec-validator's `validate` on the same file, the
floor any validating generator pays.

    python benches/bench_profile.py [--operations 2000] [--runs 5]

Prints the median wall and CPU time of each, their ratios, and a breakdown of
the in-process stages; exits 1 when the wall-time target is missed.  CPU time
is the steadier figure on a busy machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
TARGET_S = 2.0


def make_spec(operations: int) -> dict:
    """An OpenAPI 3.0 spec shaped like real ones: path parameters, $refs, shared schemas, several responses."""
    paths = {}
    for i in range(operations // 2):
        paths[f"/api/v1/resource{i}/{{id}}/items"] = {
            "parameters": [{"$ref": "#/components/parameters/id"}],
            "get": {
                "operationId": f"list{i}",
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
                "responses": {
                    "200": {"description": "ok", "content": {"application/json": {"schema": {
                        "type": "array", "items": {"$ref": "#/components/schemas/Item"}}}}},
                    "404": {"$ref": "#/components/responses/NotFound"},
                    "500": {"description": "error"},
                },
                "x-meshctl-retryable": True,
            },
            "post": {
                "operationId": f"create{i}",
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}},
                "responses": {"201": {"description": "created"}, "400": {"description": "bad request"}},
                "x-meshctl-timeout": "500ms",
            },
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": "bench", "version": "1"},
        "servers": [{"url": "https://api.example.com/{base}", "variables": {"base": {"default": "v2"}}}],
        "paths": paths,
        "components": {
            "parameters": {"id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}},
            "responses": {"NotFound": {"description": "not found"}},
            "schemas": {"Item": {"type": "object", "required": ["id"], "properties": {
                "id": {"type": "string"}, "count": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}},
        },
    }


def timed(cmd: list[str], **extra_env: str) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one fresh process."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1", **extra_env}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.decode()}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def stages(spec_path: Path) -> dict[str, float]:
    """Breakdown of one run, in this (fresh) process: imports counted where they happen."""
    sys.path.insert(0, str(SRC))
    from meshctl.profiles import openapi, text

    out: dict[str, float] = {}
    t = time.perf_counter()
    data = spec_path.read_bytes()
    text.parse_document(data, source=str(spec_path))
    out["parse JSON"] = time.perf_counter() - t
    t = time.perf_counter()
    import openapi_spec_validator  # noqa: F401

    out["import openapi-spec-validator"] = time.perf_counter() - t
    t = time.perf_counter()
    doc = openapi.load_spec(data, source=str(spec_path))
    out["parse, check $refs, validate"] = time.perf_counter() - t
    t = time.perf_counter()
    profile = openapi.from_openapi(doc, name="bench.default.svc.cluster.local", namespace="default")
    out["generate routes"] = time.perf_counter() - t
    t = time.perf_counter()
    rendered = text.dump(profile.to_dict())
    out["render YAML"] = time.perf_counter() - t
    assert len(profile.routes) and rendered
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stages", metavar="SPEC", help=argparse.SUPPRESS)  # internal: breakdown in a fresh process
    args = parser.parse_args()
    if args.stages:
        print(json.dumps(stages(Path(args.stages))))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(make_spec(args.operations)))
        baseline_cmd = [sys.executable, "-c",
                        "import json, sys; from openapi_spec_validator import validate; "
                        "validate(json.load(open(sys.argv[1])))", str(spec_path)]
        profile_cmd = [sys.executable, "-m", "meshctl", "profile", "--open-api", str(spec_path), "bench",
                       "--ignore-cluster"]
        backend = subprocess.run([sys.executable, "-c", "from openapi_spec_validator import schemas; "
                                  "print(schemas.get_validator_backend())"], capture_output=True, text=True).stdout.strip()
        baseline, ours, pure = [], [], []
        load = os.getloadavg()[0]
        for _ in range(args.runs):  # interleaved, so machine noise hits all alike
            baseline.append(timed(baseline_cmd))
            ours.append(timed(profile_cmd))
            # Why jsonschema-rs is a dependency: the same run on the pure-Python backend.
            pure.append(timed(profile_cmd, OPENAPI_SPEC_VALIDATOR_SCHEMA_VALIDATOR_BACKEND="jsonschema"))
        bw, bc = (statistics.median(x) for x in zip(*baseline))
        ow, oc = (statistics.median(x) for x in zip(*ours))
        pw, pc = (statistics.median(x) for x in zip(*pure))
        print(f"spec: {args.operations} operations, {spec_path.stat().st_size / 1024:.0f} KiB JSON; "
              f"validator backend: {backend}; {args.runs} runs each, medians; "
              f"load average {load:.1f} on {os.cpu_count()} cores")
        print(f"{'':10s}{'':60s}{'wall':>8s}{'cpu':>8s}")
        print(f"{'baseline':10s}{'json.load + openapi-spec-validator validate (fresh process)':60s}{bw:7.3f}s{bc:7.3f}s")
        print(f"{'meshctl':10s}{'profile --open-api (fresh process, YAML to stdout)':60s}{ow:7.3f}s{oc:7.3f}s")
        print(f"{'meshctl':10s}{'  the same, pure-Python jsonschema backend':60s}{pw:7.3f}s{pc:7.3f}s")
        print(f"ratio meshctl / baseline: wall {ow / bw:.2f}x, cpu {oc / bc:.2f}x; "
              f"target wall < {TARGET_S:.1f} s: {'met' if ow < TARGET_S else 'MISSED'}")
        print("breakdown of one meshctl run (wall, in a fresh process):")
        breakdown = subprocess.run([sys.executable, __file__, "--stages", str(spec_path)], capture_output=True,
                                   text=True, check=True).stdout
        for name, value in json.loads(breakdown).items():
            print(f"  {name:32s} {value:6.3f}s")
        return 0 if ow < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
