"""The Grafana dashboards of manifests/grafana/: every panel's query, with the template variables
set to the demo's workloads, run against a real Prometheus scraping the demo's proxies under
load, must return series with values.  Grafana itself does not run here; its query language is
Prometheus', which does."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Load, drive

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "src" / "meshctl" / "manifests" / "grafana"
EXPECTED = {"top-line", "namespace", "deployment", "pod", "service", "route", "authority"}
VALUES = {
    "namespace": "shop",
    "deployment": "product-gateway-api",
    "pod": "product-gateway-api-0",
    "service": "price-api-svc",
    "authority": "price-api-svc.shop.svc.cluster.local:8080",
    "__rate_interval": "30s",
}


def substitute(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VALUES[m.group(1)], expr)


def label_values(query: str) -> str:
    """Grafana's ``label_values(metric{...}, label)`` as the PromQL it stands for."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert m, query
    return f"group by ({m.group(2)}) ({m.group(1)})"


def _generator():
    spec = importlib.util.spec_from_file_location("grafana_dashboards", ROOT / "scripts" / "grafana_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboards_are_the_generators_output():
    rendered = _generator().render()
    assert {name.removesuffix(".json") for name in rendered} == EXPECTED
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name}: run python scripts/grafana_dashboards.py"


def test_every_panel_returns_series_for_the_demo(shop):
    load = Load()
    thread = threading.Thread(target=drive, args=(shop, load), kwargs={"rps": 10, "seconds": 40}, daemon=True)
    thread.start()
    try:
        time.sleep(6)  # a few scrapes of steady traffic
        failures, queried = [], 0
        with httpx.Client(base_url=shop.prometheus_url, timeout=10) as prom:
            def query(expr: str) -> list:
                body = prom.get("/api/v1/query", params={"query": expr}).json()
                assert body["status"] == "success", (expr, body)
                return body["data"]["result"]

            for path in sorted(DASHBOARDS.glob("*.json")):
                board = json.loads(path.read_text())
                for var in board["templating"]["list"]:
                    if var["type"] != "query":
                        continue
                    found = {next(iter(s["metric"].values()), "") for s in query(substitute(label_values(var["query"])))}
                    if VALUES[var["name"]] not in found:
                        failures.append(f"{path.name}: variable {var['name']} offers {sorted(found)}")
                for panel in board["panels"]:
                    for target in panel.get("targets", []):
                        expr = substitute(target["expr"])
                        queried += 1
                        values = [float(s["value"][1]) for s in query(expr)]
                        if not any(math.isfinite(v) for v in values):
                            failures.append(f"{path.name}: {panel['title']}: {expr} -> {values}")
        assert failures == [], "\n".join(failures)
        assert queried > 80
    finally:
        load.stop = True
        thread.join(timeout=20)
