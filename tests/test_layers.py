"""The layers are enforced, not just described: import-linter's contracts and mypy, run with the tests.

The contracts (``[tool.importlinter]`` in pyproject.toml): the proxy imports
nothing of meshctl, typer, rich or kubernetes; its sub-packages are layered
(transport above identity above policy above discovery and the counters above
wire); sans-IO modules import no asyncio, TLS or transport module; the CLI's
cores import no typer or rich; only meshctl.k8s imports the kubernetes client.
mypy checks meshctl_proxy (``[tool.mypy]``: strict on the sans-IO modules).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_import_contracts_hold():
    r = _run([str(BIN / "lint-imports"), "--no-cache"])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_mypy_passes_on_the_proxy(tmp_path):
    r = _run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_every_meshctl_package_is_under_the_contracts():
    """A new package of the CLI must be placed: a core (no typer/rich, no kubernetes) or the CLI itself."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    by_name = {c["name"]: c for c in contracts}
    cores = set(by_name["Cores import no typer or rich (only meshctl.cli renders)"]["source_modules"])
    no_kube = set(by_name["Only meshctl.k8s imports the kubernetes client"]["source_modules"])
    src = ROOT / "src" / "meshctl"
    packages = {f"meshctl.{p.stem if p.is_file() else p.name}" for p in src.iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and not p.stem.startswith("_"))}
    assert packages - {"meshctl.cli"} == cores
    assert packages - {"meshctl.k8s"} == no_kube
