"""The user's journey on a real cluster (opt-in: ``pytest -m cluster`` with
MESHCTL_TEST_KUBECONFIG set; docs/kubernetes.md).  Nothing here can run on the
development machines, which have no cluster: without the variable these tests
are deselected (tests/conftest.py), so a run never reports a skip for them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import run_cli

KUBECONFIG = os.environ.get("MESHCTL_TEST_KUBECONFIG", "")

pytestmark = pytest.mark.cluster


def kubectl(*args, input=None, check=True):
    proc = subprocess.run([shutil.which("kubectl") or "kubectl", "--kubeconfig", KUBECONFIG, *args], input=input,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def meshctl(*args):
    proc = run_cli("--kubeconfig", KUBECONFIG, *args, timeout=600)
    return proc


def test_install_check_inject_uninstall():
    pre = meshctl("check", "--pre", "-o", "json")
    assert pre.returncode == 0, pre.stdout
    kubectl("apply", "-f", "-", input=meshctl("install", "--crds").stdout)
    kubectl("wait", "--for=condition=Established", "crd/serviceprofiles.meshctl.io", "--timeout=60s")
    kubectl("apply", "-f", "-", input=meshctl("install").stdout)
    try:
        check = meshctl("check", "--wait", "5m", "-o", "json")
        assert check.returncode == 0, check.stdout
        assert json.loads(check.stdout)["success"] is True
        kubectl("create", "namespace", "meshctl-e2e")
        kubectl("annotate", "namespace", "meshctl-e2e", "meshctl.io/inject=enabled")
        kubectl("-n", "meshctl-e2e", "run", "web", "--image=registry.k8s.io/pause:3.9")
        pod = json.loads(kubectl("-n", "meshctl-e2e", "get", "pod", "web", "-o", "json"))
        names = [c["name"] for c in pod["spec"].get("initContainers", [])]
        assert "meshctl-proxy" in names, names
        deadline = time.monotonic() + 300
        while meshctl("check", "--proxy", "-n", "meshctl-e2e", "--wait", "30s").returncode != 0:
            assert time.monotonic() < deadline, "data plane never became healthy"
    finally:
        kubectl("delete", "namespace", "meshctl-e2e", "--ignore-not-found", check=False)
        kubectl("delete", "-f", "-", "--ignore-not-found", input=meshctl("uninstall").stdout, check=False)
