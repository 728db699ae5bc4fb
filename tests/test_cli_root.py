"""The CLI root: conventions every command shares."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import SRC, run_cli


def test_help_lists_commands_and_global_flags():
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("--kubeconfig", "--context", "--mesh-namespace", "-L", "--verbose", "version", "completion"):
        assert word in r.stdout


def test_version_client_works_offline():
    from meshctl import __version__

    r = run_cli("version", "--client", env={"KUBECONFIG": "/nonexistent"})
    assert r.returncode == 0
    assert r.stdout == f"Client version: {__version__}\n"


def test_version_without_a_kubeconfig_fails_cleanly():
    # An unloadable kubeconfig is an error (as in linkerd); an unreachable cluster is
    # "Server version: unavailable" (tests/test_cli_conventions.py).
    r = run_cli("version", env={"KUBECONFIG": "/nonexistent/kubeconfig"})
    assert r.returncode == 1
    assert r.stderr.startswith("Error: cannot load kubeconfig /nonexistent/kubeconfig")
    assert "Traceback" not in r.stderr


def test_unknown_command_is_usage_error():
    r = run_cli("frobnicate")
    assert r.returncode == 2
    assert "No such command" in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete --command meshctl")])
def test_completion_scripts(shell, marker):
    r = run_cli("completion", shell)
    assert r.returncode == 0
    assert marker in r.stdout
    assert f"_MESHCTL_COMPLETE=complete_{shell}" in r.stdout


def test_completion_protocol_answers_what_the_script_asks():
    # What the bash script sends when the user types `meshctl ver<TAB>`.
    r = run_cli(env={"_MESHCTL_COMPLETE": "complete_bash", "COMP_WORDS": "meshctl ver", "COMP_CWORD": "1"})
    assert r.returncode == 0
    assert r.stdout.split() == ["version"]
    r = run_cli(env={"_MESHCTL_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "meshctl --kube"})
    assert "--kubeconfig" in r.stdout


# The web stack is the dashboard's alone (meshctl.dashboard imports it when serving).
HEAVY = ("kubernetes", "openapi_spec_validator", "starlette", "uvicorn", "sse_starlette", "jinja2", "playwright")


def _modules_after(args: list[str], stdin: str = "") -> set[str]:
    """Run the CLI in-process in a fresh interpreter and report which heavy modules got imported."""
    code = (
        "import sys, json\n"
        f"sys.argv = ['meshctl', *{args!r}]\n"
        "from meshctl.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=stdin.encode(), capture_output=True,
                          env={"PYTHONPATH": str(SRC), "NO_COLOR": "1", "PATH": "/usr/bin:/bin"}, timeout=60)
    last = proc.stderr.decode().strip().splitlines()[-1]
    return set(json.loads(last))


@pytest.mark.parametrize("args", [["--help"], ["version", "--client"], ["inject", "-"], ["uninject", "-"]])
def test_startup_does_not_import_heavy_modules(args):
    assert _modules_after(args, stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n") == set()
