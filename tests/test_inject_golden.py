"""Golden files for ``meshctl inject`` and ``uninject``: input, golden (stdout), report (stderr).

Each case is a directory under tests/golden/<command>/ with an ``input.*`` file and
an optional ``args`` file (the command line, ``INPUT`` standing for the input's
path; default ``<command> INPUT``).  Regenerate with ``pytest --update-golden``
and review the diff.

Beyond matching the goldens, every successful inject output must:
- uninject back to its input byte for byte (``uninject(inject(x)) == x``);
- inject to itself again (idempotent);
- validate against the Kubernetes 1.31 schemas, strictly, when written with --manual.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli

GOLDEN = ROOT / "tests" / "golden"
CASES = sorted(p for cmd in ("inject", "uninject") for p in (GOLDEN / cmd).iterdir() if p.is_dir())
K8S_VERSION = "1.31.0"  # bundled by kubernetes-validate (checked offline)


def _argv(case: Path) -> list[str]:
    args_file = case / "args"
    line = args_file.read_text().strip() if args_file.exists() else f"{case.parent.name} INPUT"
    inp = next(case.glob("input.*"))
    return [str(inp.relative_to(ROOT)) if a == "INPUT" else a for a in shlex.split(line)]


def _read(path: Path) -> str:
    with open(path, newline="") as fh:  # keep CRLF as written
        return fh.read()


def _check(path: Path, actual: str, update: bool) -> None:
    if update:
        path.write_text(actual, newline="")
        return
    assert path.exists(), f"{path} missing: run pytest --update-golden"
    expected = _read(path)
    assert actual == expected, f"{path.relative_to(ROOT)} differs (run pytest --update-golden and review the diff)"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_golden(case: Path, update_golden: bool):
    argv = _argv(case)
    r = run_cli(*argv)
    _check(case / "golden", r.stdout, update_golden)
    _check(case / "report", r.stderr, update_golden)
    failed = any(line.startswith("Error:") for line in r.stderr.splitlines())
    # A case's `exit` file holds its exit code when it is a usage error (2).
    expected_exit = int((case / "exit").read_text()) if (case / "exit").exists() else (1 if failed else 0)
    assert r.returncode == expected_exit, r.stderr
    assert "Traceback" not in r.stderr
    if failed:
        assert r.stdout == "", "nothing may be written on error"


def _successful(command: str) -> list[Path]:
    return [c for c in CASES if c.parent.name == command and (c / "report").exists()
            and "Error:" not in (c / "report").read_text()]


INJECTED = _successful("inject")
# Inputs with an empty or null annotations map: uninject leaves it out, as the API
# server does (omitempty), so those come back equal as data, not as text.
OMITEMPTY_CASES = {"styles"}
OMITTABLE = {"annotations", "labels", "initContainers", "volumes", "metadata"}


def omitempty(value):
    if isinstance(value, dict):
        out = {k: omitempty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not (k in OMITTABLE and v in (None, {}, []))}
    if isinstance(value, list):
        return [omitempty(v) for v in value]
    return value


# Outputs converted with -o, and inputs meshed before, are covered by their own goldens.
AS_WRITTEN = [c for c in INJECTED if "-o" not in _argv(c)]
ROUND_TRIP = [c for c in AS_WRITTEN if not c.name.startswith("reinject")]


def _without_written_config(value, original):
    """*value* without the config.meshctl.io/* annotations that *original* did not have."""
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            base = original.get(key) if isinstance(original, dict) else None
            if key == "annotations" and isinstance(sub, dict):
                sub = {k: v for k, v in sub.items()
                       if not k.startswith("config.meshctl.io/") or (isinstance(base, dict) and k in base)}
            out[key] = _without_written_config(sub, base)
        return out
    if isinstance(value, list):
        return [_without_written_config(v, original[i] if isinstance(original, list) and i < len(original) else None)
                for i, v in enumerate(value)]
    return value


@pytest.mark.parametrize("case", ROUND_TRIP, ids=[c.name for c in ROUND_TRIP])
def test_uninject_gives_back_the_input(case: Path, tmp_path: Path):
    golden = tmp_path / "golden.yaml"
    golden.write_text(_read((case / "golden")), newline="")
    r = run_cli("uninject", str(golden))
    assert r.returncode == 0, r.stderr
    inp = next(case.glob("input.*"))
    if any(a.startswith("--") and a not in ("--manual", "--ignore-cluster", "--identity-trust-anchors-file")
           and not a.startswith("--native-sidecar") for a in _argv(case)[1:]):
        # The config.meshctl.io/* annotations written for the proxy flags are configuration, kept by
        # uninject as linkerd's keeps config.linkerd.io/*: the rest comes back exactly.
        original = list(yaml.safe_load_all(_read(inp)))
        back = list(yaml.safe_load_all(r.stdout))
        assert [omitempty(_without_written_config(b, o)) for b, o in zip(back, original)] == \
            [omitempty(o) for o in original]
        assert "config.meshctl.io/" in r.stdout or "--manual" in _argv(case)
        return
    if case.name in OMITEMPTY_CASES:
        assert r.stdout != _read(inp)
        assert [omitempty(d) for d in yaml.safe_load_all(r.stdout)] == \
            [omitempty(d) for d in yaml.safe_load_all(_read(inp))]
        return
    assert r.stdout == _read(inp), "uninject(inject(x)) must give x back byte for byte"


@pytest.mark.parametrize("case", AS_WRITTEN, ids=[c.name for c in AS_WRITTEN])
def test_inject_is_idempotent(case: Path, tmp_path: Path):
    argv = _argv(case)
    golden = tmp_path / ("golden" + next(case.glob("input.*")).suffix)
    golden.write_text(_read((case / "golden")), newline="")
    inp = next(case.glob("input.*"))
    r = run_cli(*[str(golden) if a == str(inp.relative_to(ROOT)) else a for a in argv])
    assert r.returncode == 0, r.stderr
    assert r.stdout == _read((case / "golden"))


MANUAL = [c for c in INJECTED if "--manual" in _argv(c)]


@pytest.mark.parametrize("case", MANUAL, ids=[c.name for c in MANUAL])
def test_manual_output_is_valid_kubernetes(case: Path):
    import kubernetes_validate

    objects = [d for d in yaml.safe_load_all((case / "golden").read_text()) if d]
    items = [i for d in objects for i in (d["items"] if d.get("kind") == "List" else [d])]
    assert items
    for obj in items:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata'].get('name')}: {exc.message} at {list(exc.path)}")
