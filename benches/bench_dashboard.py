"""The dashboard's cost over the local demo: first paint in Chromium, and Prometheus' query time per refresh.

    meshctl demo up --traffic 10            # a running local mesh (or --demo-dir DIR below)
    python benches/bench_dashboard.py [--demo-dir DIR] [--rounds 5]

For each page (overview, namespace, the gateway's workload page):

- **first paint**: ``meshctl dashboard`` serves the page; headless Chromium (Debian's)
  loads it and reports ``first-contentful-paint`` (navigation start to the first
  text drawn), median and worst of ``--rounds`` loads in fresh browser contexts;
- **query time per refresh**: every query one refresh of the page issues is recorded
  (the dashboard's own source, with a recording client), then replayed against the same
  Prometheus with ``stats=all``; the sum of Prometheus' ``execTotalTime`` is what the
  refresh costs Prometheus (its own measure, without HTTP), next to the number of
  queries and the wall time the refresh took end to end (HTTP included).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from meshctl.dashboard.source import LocalSource  # noqa: E402
from meshctl.demo import state  # noqa: E402
from meshctl.viz.promclient import PrometheusClient  # noqa: E402

PAGES = {
    "overview": ("/", lambda s: s.overview()),
    "namespace shop": ("/namespaces/shop", lambda s: s.namespace("shop")),
    "deploy/product-gateway-api": ("/namespaces/shop/deployments/product-gateway-api",
                                   lambda s: s.workload("shop", "product-gateway-api")),
}


class RecordingClient(PrometheusClient):
    """A PrometheusClient that remembers every query it was asked (and when)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[tuple[str, dict]] = []

    def query(self, promql, *, at=None):
        self.calls.append(("/api/v1/query", {"query": promql, "time": f"{at:.3f}"} if at else {"query": promql}))
        return super().query(promql, at=at)

    def query_range(self, promql, *, start, end, step):
        self.calls.append(("/api/v1/query_range", {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                   "step": f"{step:g}"}))
        return super().query_range(promql, start=start, end=end, step=step)


def exec_seconds(url: str, calls) -> float:
    total = 0.0
    with httpx.Client(base_url=url, timeout=10) as http:
        for path, params in calls:
            body = http.get(path, params={**params, "stats": "all"}).json()
            total += body["data"]["stats"]["timings"]["execTotalTime"]
    return total


FIRST_PAINT_JS = """() => new Promise((resolve) => {
  new PerformanceObserver((list) => {
    const fcp = list.getEntries().find((e) => e.name === 'first-contentful-paint');
    if (fcp) resolve(fcp.startTime);
  }).observe({type: 'paint', buffered: true});
})"""


def first_paints(base: str, rounds: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {name: [] for name in PAGES}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for _ in range(rounds):
            for name, (path, _) in PAGES.items():
                context = browser.new_context()
                page = context.new_page()
                page.goto(base + path)
                out[name].append(page.evaluate(FIRST_PAINT_JS))
                context.close()
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    mesh = state.load(args.demo_dir)
    directory = state.state_dir(args.demo_dir)

    client = RecordingClient(mesh.prometheus_url)
    source = LocalSource(mesh.prometheus_url, directory, client=client)
    print(f"Prometheus {mesh.prometheus_url}; {args.rounds} rounds; machine: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'page':30} {'queries':>7} {'prom exec ms (min/median/max)':>31} {'refresh wall ms (median)':>25}")
    for name, (_, build) in PAGES.items():
        execs, walls, count = [], [], 0
        for _ in range(args.rounds):
            client.calls.clear()
            started = time.perf_counter()
            build(source)
            walls.append((time.perf_counter() - started) * 1000)
            count = len(client.calls)
            execs.append(exec_seconds(mesh.prometheus_url, client.calls) * 1000)
        print(f"{name:30} {count:7d} {min(execs):13.1f} / {statistics.median(execs):5.1f} / {max(execs):5.1f}    "
              f"{statistics.median(walls):17.1f}")

    proc = subprocess.Popen([sys.executable, "-m", "meshctl", "dashboard", "--demo-dir", str(directory), "-p", "0",
                             "--show", "url"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        proc.stdout.readline()
        base = proc.stdout.readline().strip()
        httpx.get(base + "/", timeout=10)  # warm: imports, templates compiled
        paints = first_paints(base, args.rounds)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    print(f"{'page':30} {'first contentful paint ms (min/median/max)':>44}")
    for name, values in paints.items():
        print(f"{name:30} {min(values):23.0f} / {statistics.median(values):5.0f} / {max(values):5.0f}")


if __name__ == "__main__":
    main()
