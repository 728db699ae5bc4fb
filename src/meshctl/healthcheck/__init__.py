"""``meshctl check``: categories of checks, one result model, three renderings.

Mirrors ``linkerd check`` (pkg/healthcheck): each :class:`Check` has a stable
id, a description, a hint, and is fatal (a failure stops the run: nothing
after it could be trusted) or a warning (reported, fails the run only with
``--fail-on-warning``).  Checks marked ``retry`` are tried again until the
``--wait`` deadline, as Linkerd's ``retryDeadline`` checks are (pods becoming
ready, for instance); the others give their verdict at once.

A check is a pure *verdict* over named *facts*: plain data the
:class:`Facts` provider fetches (from the cluster in ``meshctl check``, from
dicts in tests).  Verdicts raise :class:`Failed` with the reason; returning
is success.  Every attempt runs under the run's deadline in a worker thread,
so no check can hang past it whatever the network does.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

SUCCESS, WARNING, ERROR = "success", "warning", "error"
RETRY_INTERVAL = 1.0  # seconds between attempts of a retried check (Linkerd polls about as often)


class Failed(Exception):
    """A check's verdict: it did not pass; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    id: str
    description: str
    hint: str
    verdict: Callable[..., None]
    facts: tuple[str, ...] = ()
    fatal: bool = False
    warning: bool = False
    retry: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Category:
    name: str
    checks: tuple[Check, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CheckResult:
    category: str
    id: str
    description: str
    hint: str
    result: str  # success, warning or error
    error: str = ""


class Facts(Protocol):
    def get(self, name: str) -> Any: ...

    def forget(self, names: Iterable[str]) -> None: ...


@dataclasses.dataclass(slots=True)
class Report:
    results: list[CheckResult] = dataclasses.field(default_factory=list)
    fail_on_warning: bool = False

    @property
    def success(self) -> bool:
        bad = {ERROR, WARNING} if self.fail_on_warning else {ERROR}
        return not any(r.result in bad for r in self.results)

    def categories(self) -> list[tuple[str, list[CheckResult]]]:
        out: dict[str, list[CheckResult]] = {}
        for r in self.results:
            out.setdefault(r.category, []).append(r)
        return list(out.items())


def run(categories: Iterable[Category], facts: Facts, *, deadline: float, attempt_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[Check, str], None] | None = None) -> Iterator[CheckResult]:
    """Run the checks in order, yielding each result as it is known.

    *deadline* is a *clock* time: retried checks stop retrying there.  Each
    attempt may run until the deadline, or for *attempt_timeout* when less is
    left, and never longer: an attempt still running then is an error saying
    so.  A fatal failure ends the run.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="check")
    try:
        for category in categories:
            for check in category.checks:
                result = _run_one(check, category.name, facts, pool, deadline=deadline,
                                  attempt_timeout=attempt_timeout, clock=clock, sleep=sleep, on_wait=on_wait)
                yield result
                if result.result == ERROR and check.fatal:
                    return
                if result.error.startswith("timed out"):
                    # The worker may still be stuck in a request: a fresh one for the next check.
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="check")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _attempt(check: Check, facts: Facts) -> str:
    try:
        args = [facts.get(name) for name in check.facts]
        check.verdict(*args)
    except Failed as exc:
        return str(exc) or "failed"
    except Exception as exc:  # a fact that could not be fetched: the check fails with that reason
        return str(exc) or type(exc).__name__
    return ""


def _run_one(check, category, facts, pool, *, deadline, attempt_timeout, clock, sleep, on_wait) -> CheckResult:
    while True:
        timeout = max(deadline - clock(), attempt_timeout)
        future = pool.submit(_attempt, check, facts)
        try:
            error = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            error = f"timed out: the check did not finish within {timeout:.0f}s"
        if not error:
            return CheckResult(category, check.id, check.description, check.hint, SUCCESS)
        if check.retry and not error.startswith("timed out") and clock() + RETRY_INTERVAL < deadline:
            if on_wait:
                on_wait(check, error)
            sleep(RETRY_INTERVAL)
            facts.forget(check.facts)
            continue
        return CheckResult(category, check.id, check.description, check.hint, WARNING if check.warning else ERROR,
                           error)


# --- rendering ------------------------------------------------------------------------------

OK_MARK, WARN_MARK, ERR_MARK = "√", "‼", "×"
_MARKS = {SUCCESS: OK_MARK, WARNING: WARN_MARK, ERROR: ERR_MARK}


def render_result(r: CheckResult) -> list[str]:
    lines = [f"{_MARKS[r.result]} {r.description}"]
    if r.result != SUCCESS:
        lines.append(f"    {r.error}")
        lines.append(f"    hint: {r.hint}")
    return lines


def render_table(report: Report) -> str:
    out = []
    for name, results in report.categories():
        out += [name, "-" * len(name)]
        for r in results:
            out += render_result(r)
        out.append("")
    out.append(f"Status check results are {OK_MARK if report.success else ERR_MARK}")
    return "\n".join(out) + "\n"


def render_short(report: Report) -> str:
    # Linkerd's -o short: only what is not green, under its category, then the status line.
    out = []
    for name, results in report.categories():
        bad = [r for r in results if r.result != SUCCESS]
        if bad:
            out += [name, "-" * len(name)]
            for r in bad:
                out += render_result(r)
            out.append("")
    out.append(f"Status check results are {OK_MARK if report.success else ERR_MARK}")
    return "\n".join(out) + "\n"


def to_json_data(report: Report) -> dict:
    """``{success, categories: [{categoryName, checks: [{description, hint, error, result}]}]}``."""
    return {
        "success": report.success,
        "categories": [
            {"categoryName": name,
             "checks": [{"description": r.description, "hint": r.hint, "error": r.error, "result": r.result}
                        for r in results]}
            for name, results in report.categories()
        ],
    }


def render_json(report: Report) -> str:
    return json.dumps(to_json_data(report), indent=2) + "\n"


class DictFacts:
    """Facts from a mapping of name -> value (or a callable making it); for tests and composition."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def get(self, name: str) -> Any:
        value = self._values[name]
        return value() if callable(value) else value

    def forget(self, names: Iterable[str]) -> None:
        pass
