"""``meshctl dashboard`` in a cluster: finding the viz web pod and serving the port-forward's URL.

Against the fake API server (tests/fakekube), through the real kubernetes client.
The fake does not implement the ``pods/portforward`` upgrade (WebSocket/SPDY
streams), so the last test checks what can be checked here: the URL is served
and a connection through it reaches the API server's portforward endpoint,
whose refusal is reported in one line (docs/dashboard.md says so).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, SRC, run_cli
from fakekube import FakeKube
from fakekube.controllers import run_deployments


@pytest.fixture
def kube():
    with FakeKube(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(kube, tmp_path):
    return str(kube.kubeconfig(tmp_path / "kubeconfig"))


def web_deployment(namespace: str = "meshctl-viz") -> dict:
    labels = {"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "meshctl-viz"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": namespace},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "web", "image": "meshctl:dev",
                                                           "ports": [{"containerPort": 8084}]}]}}}}


def dashboard(kubeconfig: str, *args: str, timeout: float = 60):
    # --kubeconfig names a cluster: the command reaches it (an empty HOME: no local mesh around).
    return run_cli("--kubeconfig", kubeconfig, "dashboard", "--show", "url", *args, timeout=timeout,
                   env={"HOME": "/nonexistent", "MESHCTL_DEMO_DIR": ""})


def test_without_the_viz_extension_it_says_how_to_install_it(kube, kubeconfig):
    r = dashboard(kubeconfig, "--wait", "1s")
    assert r.returncode == 1
    assert r.stderr.strip() == ("Error: the viz extension is not installed: no deployment web in namespace meshctl-viz "
                                "(install it with: meshctl viz install | kubectl apply -f -)")


def test_it_waits_for_a_ready_web_pod_then_names_what_it_saw(kube, kubeconfig):
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshctl-viz"}})
    kube.put(web_deployment())
    run_deployments(kube, namespace="meshctl-viz", ready=False)
    r = dashboard(kubeconfig, "--wait", "2s")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("Waiting for the dashboard to become available (1 pod(s) of deployment/web")
    assert lines[-1] == ("Error: the dashboard is not available after waiting 2s: 1 pod(s) of deployment/web, none "
                         "Running and Ready in namespace meshctl-viz (kubectl -n meshctl-viz get pods)")


def test_the_mesh_namespace_flag_moves_the_viz_namespace(kube, kubeconfig):
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "linkerd-viz"}})
    kube.put(web_deployment("linkerd-viz"))
    r = run_cli("--kubeconfig", kubeconfig, "-L", "linkerd", "dashboard", "--wait", "1s",
                env={"HOME": "/nonexistent", "MESHCTL_DEMO_DIR": ""})
    assert r.returncode == 1 and "in namespace linkerd-viz" in r.stderr  # found the deployment: no pods yet


def test_with_a_ready_pod_it_serves_the_url_and_forwards_through_the_api_server(kube, kubeconfig):
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshctl-viz"}})
    kube.put(web_deployment())
    (pod,) = run_deployments(kube, namespace="meshctl-viz")
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", "--kubeconfig", kubeconfig, "dashboard", "-p", "0",
                             "--show", "url"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1", "HOME": "/nonexistent",
                                 "MESHCTL_DEMO_DIR": ""})
    try:
        assert proc.stdout.readline() == "meshctl dashboard available at:\n"
        url = proc.stdout.readline().strip()
        host, port = url.removeprefix("http://").split(":")
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            conn.settimeout(20)
            try:
                answer = conn.recv(100)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # the fake refuses the portforward upgrade: the relay closes
        line = proc.stderr.readline()
        assert line == (f"port-forward to pod/{pod['metadata']['name']} in meshctl-viz: Handshake status 404 Not Found: "
                        "the server could not find the requested resource\n")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
    assert code == 0
