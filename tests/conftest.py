"""Shared fixtures.  ``--update-golden`` regenerates golden files (review the diff)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


def run_cli(*args: str, input: str | bytes | None = None, env: dict | None = None, module: str = "meshctl",
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m meshctl ARGS`` as a user would, capturing stdout and stderr as text."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1", "COLUMNS": "200"}
    full_env.update(env or {})
    if isinstance(input, str):
        input = input.encode()
    proc = subprocess.run([sys.executable, "-m", module, *args], input=input, capture_output=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def netns_lab():
    """A :class:`netns.Lab` (test pods in network namespaces), removed after the test."""
    from netns import Lab

    with Lab() as lab:
        yield lab


def pytest_collection_modifyitems(config, items):
    # The real-cluster journey (marker "cluster") is opt-in: without a cluster to
    # point at it is deselected, not skipped, so no run hides a skip behind it.
    if os.environ.get("MESHCTL_TEST_KUBECONFIG"):
        return
    kept = [item for item in items if item.get_closest_marker("cluster") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("cluster")])
        items[:] = kept
