"""``meshctl dashboard``'s flags, start-up cost and failures (the serving itself: test_browser.py)."""

from __future__ import annotations

import pytest

from conftest import run_cli
from test_cli_root import _modules_after



@pytest.mark.parametrize("args", [["dashboard", "--help"], ["dashboard", "--port", "-1"]])
def test_the_web_stack_is_imported_only_when_the_dashboard_runs(args):
    assert _modules_after(args) == set()  # test_cli_root.HEAVY includes starlette, uvicorn, jinja2...


def test_help_names_linkerds_flags():
    r = run_cli("dashboard", "--help")
    assert r.returncode == 0
    for flag in ("--address", "--port", "-p", "--show", "--wait", "--prometheus-url", "--grafana-url", "--enforced-host"):
        assert flag in r.stdout


@pytest.mark.parametrize("args,names", [
    (["--port", "70000"], "--port"),
    (["--show", "browser"], "--show"),
    (["--wait", "soon"], "--wait"),
    (["--prometheus-url", "127.0.0.1:9090"], "--prometheus-url"),
    (["--enforced-host", "(unclosed"], "--enforced-host"),
])
def test_bad_flags_are_usage_errors_naming_the_flag(args, names):
    r = run_cli("dashboard", *args)
    assert r.returncode == 2, r.stderr
    assert names in r.stderr
    assert r.stdout == ""


def test_unreachable_prometheus_fails_in_one_line_after_the_wait():
    r = run_cli("dashboard", "--prometheus-url", "http://127.0.0.1:9", "--wait", "1s", "--port", "0", "--show", "url")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: Prometheus at http://127.0.0.1:9 is not ready after waiting 1s")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_a_taken_port_is_named(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("dashboard", "--prometheus-url", "http://127.0.0.1:9", "--wait", "1s", "-p", str(port))
    assert r.returncode == 1
    assert r.stderr.strip() == f"Error: --address 127.0.0.1 --port {port}: Address already in use"


def test_without_a_cluster_or_a_local_mesh_it_names_the_missing_state_file(tmp_path):
    env = {"HOME": str(tmp_path), "MESHCTL_DEMO_DIR": "", "KUBECONFIG": ""}
    r = run_cli("dashboard", "--show", "url", "-p", "0", env=env)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line == (f"Error: no local mesh: {tmp_path}/.local/state/meshctl/demo/mesh.json does not exist "
                    "(start one with: meshctl demo up)")
