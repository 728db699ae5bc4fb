"""Fixtures for the proxy tests: real upstream apps and real ``meshctl-proxy`` processes on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .apps import H2Server, Http1App, LoopThread

ROOT = Path(__file__).resolve().parents[2]


class ProxyProcess:
    """``python -m meshctl_proxy`` with all listeners on ephemeral loopback ports."""

    argv: tuple[str, ...] = ("-m", "meshctl_proxy")  # after the interpreter; subclasses run other seams

    def __init__(self, **env: str) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_PROXY_")}
        full.update({
            "PYTHONPATH": str(ROOT / "src"),
            "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
            "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
            "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
            "MESHCTL_PROXY_LOG_LEVEL": "warn",
        })
        full.update(env)
        self.proc = subprocess.Popen([sys.executable, *self.argv], env=full, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode()
        m = re.search(r"outbound=([\d.]+):(\d+) inbound=([\d.]+):(\d+) admin=([\d.]+):(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r} {self.proc.stderr.read().decode()[:2000]}")
        self.outbound = (m.group(1), int(m.group(2)))
        self.inbound = (m.group(3), int(m.group(4)))
        self.admin = (m.group(5), int(m.group(6)))
        c = re.search(r"control=([\d.]+):(\d+)", line)
        self.control = (c.group(1), int(c.group(2))) if c else None

    def url(self, which: str = "outbound", path: str = "/") -> str:
        host, port = getattr(self, which)
        return f"http://{host}:{port}{path}"

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url("admin", path), timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return parse_metrics(self.admin_get("/metrics")[1])

    def terminate(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return self.proc.returncode


_SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad exposition line {line!r}"
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric_sum(metrics: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


@pytest.fixture(scope="session")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture(scope="module")
def app(loop_thread):
    a = loop_thread.run(Http1App().start())
    yield a
    loop_thread.run(a.stop())


@pytest.fixture(scope="module")
def apps(loop_thread):
    """An HTTP/1.1 and an HTTP/2 upstream app, by the protocol name httpx reports."""
    h1 = loop_thread.run(Http1App().start())
    h2 = loop_thread.run(H2Server().start())
    yield {"HTTP/1.1": h1, "HTTP/2": h2}
    loop_thread.run(h1.stop())
    loop_thread.run(h2.stop())


@pytest.fixture(scope="module")
def proxy():
    p = ProxyProcess()
    yield p
    p.terminate()


@pytest.fixture
def start_proxy():
    started = []

    def start(**env):
        p = ProxyProcess(**env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.terminate()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
