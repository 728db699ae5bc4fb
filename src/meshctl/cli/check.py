"""``meshctl check``: is the control plane (or the data plane, or the cluster
before an install) healthy?  Mirrors ``linkerd check``."""

from __future__ import annotations

import enum
import sys
from typing import Optional

import typer

from meshctl.cli import _common


class CheckOutput(str, enum.Enum):
    table = "table"
    json = "json"
    short = "short"


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check(
        ctx: typer.Context,
        pre: bool = typer.Option(False, "--pre", help="Check whether meshctl can be installed on the cluster."),
        proxy: bool = typer.Option(False, "--proxy", help="Also check the data-plane proxies."),
        namespace: Optional[str] = typer.Option(None, "--namespace", "-n",
                                                help="With --proxy: only this namespace's proxies (default: all)."),
        wait: str = typer.Option("5m", "--wait", help="How long to retry checks that may still converge (e.g. 30s, 5m)."),
        output: CheckOutput = typer.Option(CheckOutput.table, "--output", "-o", help="table, json or short."),
        fail_on_warning: bool = typer.Option(False, "--fail-on-warning", help="Exit 1 on warnings too."),
    ) -> None:
        """Check the installation and report each check's verdict; exit 1 on a failure."""
        import time

        from meshctl.errors import UsageError
        from meshctl.healthcheck import checks
        from meshctl.viz import checks as viz_checks
        from meshctl.viz.checks import VizFacts
        from meshctl_proxy.config import parse_duration

        opts = _common.global_options(ctx)
        try:
            wait_s = parse_duration(wait)
        except ValueError as exc:
            raise UsageError(f"--wait: {exc}") from None
        if pre and proxy:
            # linkerd: "--pre and --proxy flags are mutually exclusive"
            raise UsageError("--pre and --proxy flags are mutually exclusive")
        if namespace and not proxy:
            raise UsageError("--namespace only applies with --proxy")
        # One request, and one attempt of a check, may take this long: never more
        # than 10 s, never more than --wait unless that is under 2 s.
        attempt_timeout = max(2.0, min(10.0, wait_s))
        from meshctl import k8s

        k8s.preload()
        facts = VizFacts(kubeconfig=opts.kubeconfig, context=opts.context, mesh_namespace=opts.mesh_namespace,
                         data_plane_namespace=namespace or "", request_timeout=attempt_timeout)
        categories = checks.categories(pre=pre, proxy=proxy)
        if not pre and facts.viz_installed():
            # Installed extensions' checks follow the control plane's, as `linkerd check` runs them.
            categories += viz_checks.categories()
        run_checks(categories, facts, output=output, deadline=time.monotonic() + wait_s,
                   attempt_timeout=attempt_timeout, fail_on_warning=fail_on_warning)


def run_checks(categories, facts, *, output: CheckOutput, deadline: float, attempt_timeout: float,
               fail_on_warning: bool) -> None:
    """Run *categories* over *facts*, rendering each result as it comes; exit 1 when the run failed.
    ``meshctl check`` and ``meshctl viz check`` both render through here."""
    from meshctl import healthcheck

    report = healthcheck.Report(fail_on_warning=fail_on_warning)
    spinner = _Spinner() if sys.stderr.isatty() else None
    printed_category = None
    for result in healthcheck.run(categories, facts, deadline=deadline, attempt_timeout=attempt_timeout,
                                  on_wait=spinner.waiting if spinner else None):
        if spinner:
            spinner.clear()
        report.results.append(result)
        if output == CheckOutput.table:
            if result.category != printed_category:
                if printed_category is not None:
                    print()
                print(f"{result.category}\n{'-' * len(result.category)}")
                printed_category = result.category
            print(_common.colorize_marks("\n".join(healthcheck.render_result(result)), sys.stdout), flush=True)
    if spinner:
        spinner.clear()
    if output == CheckOutput.table:
        mark = healthcheck.OK_MARK if report.success else healthcheck.ERR_MARK
        print(_common.colorize_marks(f"\nStatus check results are {mark}", sys.stdout))
    elif output == CheckOutput.json:
        print(healthcheck.render_json(report), end="")
    else:
        print(_common.colorize_marks(healthcheck.render_short(report), sys.stdout), end="")
    if not report.success:
        raise typer.Exit(1)


class _Spinner:
    """One line on stderr, redrawn while a retried check waits; only used on a terminal."""

    FRAMES = "|/-\\"

    def __init__(self):
        self._n = 0

    def waiting(self, check, error: str) -> None:
        self._n += 1
        sys.stderr.write(f"\r\x1b[K{self.FRAMES[self._n % 4]} {check.description} -- waiting: {error[:80]}")
        sys.stderr.flush()

    def clear(self) -> None:
        if self._n:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._n = 0
