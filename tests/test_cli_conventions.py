"""Conventions every command shares, checked on every command the typer app has.

The commands are discovered from the app (``meshctl.cli.iter_commands``), so a
command registered later by any module is covered without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli

from meshctl.cli import build_command, iter_commands
from meshctl.cli._common import GlobalOptions, global_options

COMMANDS = [(path, command) for path, command in iter_commands()]
LEAVES = [(path, command) for path, command in COMMANDS if not hasattr(command, "commands")]
GLOBAL_AFTER = ["--kubeconfig", "/tmp/k.yaml", "--context", "ctx-1", "-L", "mesh-ns", "--verbose"]


def _parse(args: list[str]):
    """Parse ``args`` as ``meshctl`` does, down to the leaf command's context, without running it."""
    group = build_command()
    ctx = group.make_context("meshctl", list(args), resilient_parsing=True)
    command = group
    while hasattr(command, "commands"):
        # A group's parser keeps the sub-command's name apart from the rest (click's protected args).
        rest = [*(getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", None) or []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=True)
    return ctx


def test_discovery_sees_every_command():
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"check", "inject", "uninject", "install", "profile", "version", "help", "identity create"} <= names


@pytest.mark.parametrize("path", [path for path, _ in LEAVES], ids=lambda p: " ".join(p))
def test_global_flags_work_after_the_command_name(path):
    ctx = _parse([*path, *GLOBAL_AFTER])
    assert global_options(ctx) == GlobalOptions(kubeconfig="/tmp/k.yaml", context="ctx-1", mesh_namespace="mesh-ns",
                                                verbose=True)


@pytest.mark.parametrize("path", [path for path, _ in LEAVES], ids=lambda p: " ".join(p))
def test_global_flags_after_the_command_win_over_those_before(path):
    ctx = _parse(["-L", "before", "--context", "kept", *path, "-L", "after"])
    opts = global_options(ctx)
    assert (opts.mesh_namespace, opts.context, opts.verbose) == ("after", "kept", False)


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda p: " ".join(p))
def test_help_of_every_command_lists_the_global_flags_and_real_placeholders(path):
    r = run_cli("help", *path)
    assert r.returncode == 0, r.stderr
    assert "Global flags:" in r.stdout and "--kubeconfig PATH" in r.stdout
    assert "<str>" not in r.stdout and "<list" not in r.stdout and "<float>" not in r.stdout
    assert run_cli(*path, "--help").stdout == r.stdout


def test_root_help_summaries_are_whole_sentences():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "..." not in r.stdout.split("Commands:")[1]


# -- the global flags reach what the commands do (real runs) ---------------------------------

def _unreachable_kubeconfig(tmp_path: Path) -> Path:
    # Port 9 on loopback (discard): nothing listens, the connection is refused at once.
    path = tmp_path / "kubeconfig"
    path.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: ctx-1, context: {cluster: c, user: u}}]
current-context: ctx-1
""")
    return path


@pytest.mark.parametrize("args", [
    ["check", "--wait", "1s"],
    ["version"],
    ["uninstall"],
    ["install"],
    ["profile", "--open-api", "samples/swagger/price-api.json", "price-api-svc"],
    ["inject", "--manual", "samples/shop/deployments.yaml"],
])
def test_kubeconfig_after_the_command_is_the_one_used(tmp_path, args):
    missing = tmp_path / "missing-kubeconfig"
    r = run_cli(*args, "--kubeconfig", str(missing), env={"KUBECONFIG": ""})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert str(missing) in r.stdout + r.stderr


def test_version_with_an_unreachable_cluster_says_unavailable_and_succeeds(tmp_path):
    r = run_cli("version", "--kubeconfig", str(_unreachable_kubeconfig(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "Server version: unavailable"


def test_version_with_an_unloadable_kubeconfig_is_an_error_naming_it(tmp_path):
    r = run_cli("version", "--kubeconfig", str(tmp_path / "none"))
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: cannot load kubeconfig {tmp_path / 'none'}")


def test_context_after_the_command_is_the_one_used(tmp_path):
    r = run_cli("version", "--kubeconfig", str(_unreachable_kubeconfig(tmp_path)), "--context", "no-such-ctx")
    assert r.returncode == 1
    assert "no-such-ctx" in r.stderr


def test_mesh_namespace_after_the_command_is_the_one_used():
    r = run_cli("install", "--ignore-cluster", "-L", "other-mesh")
    assert r.returncode == 0, r.stderr
    assert "namespace: other-mesh" in r.stdout and "namespace: meshctl\n" not in r.stdout


def test_verbose_after_the_command_is_the_one_used():
    r = run_cli("inject", "samples/shop/deployments.yaml", "--verbose")
    assert r.returncode == 0, r.stderr
    assert "√" in r.stderr


def test_help_command():
    r = run_cli("help", "identity", "create")
    assert r.returncode == 0 and r.stdout.startswith("Usage: meshctl identity create")
    r = run_cli("help", "identity", "nope")
    assert r.returncode == 2 and "unknown command 'identity nope'" in r.stderr


def test_no_arguments_prints_help_and_succeeds():
    r = run_cli()
    assert r.returncode == 0 and r.stdout.startswith("Usage: meshctl")


# -- exit codes: 2 for every usage error, on every command ----------------------------------------

def _generic_usage_errors():
    """Usage errors derived from each command's own parameters."""
    cases = []
    for path, command in LEAVES:
        name = " ".join(path)
        cases.append(pytest.param([*path, "--no-such-flag"], "No such option", id=f"{name}: unknown flag"))
        own = [p for p in command.params if not getattr(p, "persistent", False) and p.name != "help"]
        if any(p.required for p in own):
            cases.append(pytest.param(list(path), "Missing", id=f"{name}: required missing"))
        for p in own:
            descriptor = getattr(p, "type_descriptor", None)
            if descriptor is None or p.param_type_name != "option":
                continue
            flag = max(p.opts, key=len)
            if descriptor.is_choice:
                cases.append(pytest.param([*path, flag, "bogus"], "Invalid value", id=f"{name}: {flag} bogus"))
            elif descriptor.annotation in (int, float):
                cases.append(pytest.param([*path, flag, "abc"], "Invalid value", id=f"{name}: {flag} abc"))
    return cases


# The usage errors each command checks itself (flag values outside their domain,
# flags that exclude each other, argument counts).  (args, words of the message).
USAGE_ERRORS = [
    (["check", "--wait", "abc"], "--wait: expected a duration"),
    (["check", "--pre", "--proxy"], "--pre and --proxy flags are mutually exclusive"),
    (["check", "-n", "shop"], "--namespace only applies with --proxy"),
    (["demo", "run", "--rps", "0"], "--rps"),
    (["demo", "run", "--duration", "abc"], "--duration"),
    (["demo", "run", "--price-failure-rate", "1.5"], "--price-failure-rate"),
    (["demo", "run", "--address-prefix", "10.0.0"], "--address-prefix"),
    (["profile", "--open-api", "samples/swagger/price-api.json"], "expected one SERVICE"),
    (["profile", "price-api-svc"], "give exactly one of"),
    (["profile", "--validate"], "--validate needs at least one FILE"),
    (["profile", "--template", "web", "-n", "Bad_NS", "--ignore-cluster"], "namespace 'Bad_NS'"),
    (["profile", "--template", "Web", "--ignore-cluster"], "service name 'Web'"),
    (["install", "--ignore-cluster", "--set", "nosuchkey=1"], "unknown value 'nosuchkey'"),
    (["install", "--ignore-cluster", "--set", "novalue"], "expected KEY=VALUE"),
    (["inject", "--proxy-cpu-request", "abc", "-"], "--proxy-cpu-request"),
    (["inject", "--proxy-cpu-request", "2", "--proxy-cpu-limit", "1", "-"],
     "The cpu limit '1' cannot be lower than the cpu request '2'"),
    (["inject", "--image-pull-policy", "sometimes", "-"], "--image-pull-policy: must be one of: Always, IfNotPresent, Never"),
    (["install", "--ignore-cluster", "-L", "Bad_NS"], "-L/--mesh-namespace: namespace 'Bad_NS'"),
    (["upgrade", "-L", "Bad_NS"], "-L/--mesh-namespace: namespace 'Bad_NS'"),
    (["install", "--ignore-cluster", "--image-pull-policy", "sometimes"], "--image-pull-policy"),
    (["inject", "--opaque-ports", "99999", "-"], "--opaque-ports"),
    (["inject", "http://example.invalid/x.yaml"], "plain http is refused"),
    (["inject", "--manual", "--ignore-cluster", "-"], "--identity-trust-anchors-file"),
    (["identity", "show"], "give exactly one of --file or --admin"),
    (["identity", "create", "--anchor-lifetime", "forever"], "--anchor-lifetime"),
    (["destination", "serve", "--addr", "nowhere"], "--addr"),
    (["destination", "serve"], "give exactly one of --registry FILE and --kubernetes"),
    (["proxy-injector", "serve", "--addr", "nowhere"], "--addr"),
    (["help", "frobnicate"], "unknown command 'frobnicate'"),
    (["frobnicate"], "No such command"),
]


@pytest.mark.parametrize("args,words", _generic_usage_errors() + [
    pytest.param(args, words, id=" ".join(args)) for args, words in USAGE_ERRORS])
def test_usage_errors_exit_2(args, words):
    r = run_cli(*args, input="", timeout=30)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr
    assert r.stdout == ""
    error = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "Value error" not in error[0] and "Traceback" not in r.stderr


RUNTIME_ERRORS = [
    (["inject", "no-such-file.yaml"], "no-such-file.yaml"),
    (["profile", "--open-api", "no-such-spec.json", "svc", "--ignore-cluster"], "no-such-spec.json"),
    (["install", "--ignore-cluster", "-f", "no-such-values.yaml"], "no-such-values.yaml"),
    (["profile", "--validate", "no-such-profile.yaml"], "no-such-profile.yaml"),
]


@pytest.mark.parametrize("args,words", RUNTIME_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_runtime_errors_exit_1(args, words):
    r = run_cli(*args, input="", timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert words in r.stderr and r.stdout == ""


# -- what a person sees: colour on a terminal only, whole tables ----------------------------------

def _run_on_terminal(args: list[str], env: dict) -> str:
    """Run meshctl with stdout and stderr on a pseudo-terminal; what the terminal showed."""
    import os
    import pty
    import subprocess
    import sys

    from conftest import ROOT, SRC

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", *args], stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "80", **env})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode()


@pytest.mark.parametrize("args", [["check", "--wait", "1s", "--kubeconfig", "/nonexistent"],
                                  ["inject", "samples/shop/deployments.yaml", "--verbose"]], ids=["check", "inject"])
def test_marks_are_coloured_on_a_terminal_only(args):
    seen = _run_on_terminal(args, {"NO_COLOR": ""})
    assert "\x1b[31m×\x1b[0m" in seen or "\x1b[32m√\x1b[0m" in seen, seen
    plain = _run_on_terminal(args, {"NO_COLOR": "1"})
    assert "\x1b[" not in plain.replace("\x1b[K", "") and ("×" in plain or "√" in plain)
    piped = run_cli(*args, env={"NO_COLOR": ""})
    assert "\x1b" not in piped.stdout + piped.stderr
