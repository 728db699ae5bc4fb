"""``meshctl viz stat|routes|edges`` against the demo's three APIs, a real Prometheus scraping their proxies.

The numbers are checked against what the load generator itself sent and got, over
the same window, so a wrong query (or a wrong label in the proxy) fails here.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from conftest import run_cli

from .conftest import Load, drive

pytestmark = pytest.mark.slow

WINDOW_S = 15
GATEWAY_ID = "product-gateway-api.shop.serviceaccount.identity.meshctl.cluster.local"


@pytest.fixture(scope="module")
def busy_shop(shop):
    """The shop under a steady load, running for a whole window before the first query."""
    load = Load()
    thread = threading.Thread(target=drive, args=(shop, load), kwargs={"rps": 12, "seconds": 60}, daemon=True)
    thread.start()
    time.sleep(WINDOW_S + 2)
    yield shop, load
    load.stop = True
    thread.join(timeout=20)


def viz(shop, *args: str):
    return run_cli("viz", *args, "--demo-dir", str(shop.dir), timeout=60)


def test_stat_agrees_with_what_the_load_generator_counted(busy_shop):
    shop, load = busy_shop
    start = time.time()
    r = viz(shop, "stat", "-n", "shop", "deploy", "-o", "json", "-t", f"{WINDOW_S}s")
    end = time.time()
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"product-gateway-api", "product-api", "price-api"}
    # The query ran somewhere between start and end: the generator's own count over that window.
    at = (start + end) / 2
    sent = load.between(at - WINDOW_S, at)
    assert len(sent) > 100, len(sent)
    ok = sum(1 for status in sent if status and status < 500)
    gateway = rows["product-gateway-api"]
    assert gateway["meshed"] == "1/1" and gateway["kind"] == "deployment" and gateway["namespace"] == "shop"
    assert abs(gateway["success"] - ok / len(sent)) <= 0.01, (gateway, ok, len(sent))
    assert gateway["rps"] == pytest.approx(len(sent) / WINDOW_S, rel=0.10), (gateway, len(sent))
    assert gateway["latency_ms_p50"] <= gateway["latency_ms_p95"] <= gateway["latency_ms_p99"]
    # price-api fails 30% of its requests: its own success rate shows them.
    assert 0.55 < rows["price-api"]["success"] < 0.85
    # A table for people: same rows, whole names, no colour when piped.
    r = viz(shop, "stat", "deploy", "-t", f"{WINDOW_S}s", "-o", "wide")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99",
                              "TCP_CONN", "READ_BYTES/SEC", "WRITE_BYTES/SEC"]
    assert sorted(line.split()[0] for line in lines) == ["price-api", "product-api", "product-gateway-api"]
    assert "\x1b[" not in r.stdout


def test_routes_show_actual_success_below_effective_when_retries_hide_failures(busy_shop):
    shop, _ = busy_shop
    r = viz(shop, "routes", "--to", "svc/price-api-svc", "-n", "shop", "-t", f"{WINDOW_S}s", "-o", "wide")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["ROUTE", "SERVICE", "EFFECTIVE_SUCCESS", "EFFECTIVE_RPS", "ACTUAL_SUCCESS",
                              "ACTUAL_RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
    rows = {line.split("  ")[0].strip(): line.split() for line in lines}
    assert set(rows) == {"GET /api/prices", "[DEFAULT]"}
    prices = rows["GET /api/prices"][2:]  # after the route's two words
    effective, actual = float(prices[1].rstrip("%")), float(prices[3].rstrip("%"))
    assert prices[0] == "price-api-svc"
    assert actual < effective - 10, prices  # retries turned ~30% failures into (almost) none
    assert float(prices[4].removesuffix("rps")) > float(prices[2].removesuffix("rps"))  # the retries are counted
    r = viz(shop, "routes", "--to", "svc/price-api-svc", "-t", f"{WINDOW_S}s", "-o", "json")
    data = json.loads(r.stdout)
    (route,) = [row for row in data["deploy/product-gateway-api"] if row["route"] == "GET /api/prices"]
    assert route["actual_success"] < route["effective_success"]
    assert route["actual_rps"] > route["effective_rps"]


def test_routes_without_to_show_the_routes_a_workload_served(busy_shop):
    """Linkerd's inbound route metrics: each API's proxy counts what it served by its own profile's
    routes (the caller's retries included: each attempt reaches it), [DEFAULT] for the rest."""
    from meshctl.viz.promclient import PrometheusClient

    shop, load = busy_shop
    product = shop.run.plan.workload("product-api")
    prom = PrometheusClient(shop.prometheus_url)
    unmatched = ('sum(route_request_total{direction="inbound",namespace="shop",deployment="product-api",'
                 'rt_route="[DEFAULT]"})')

    def scraped(n: int) -> bool:
        """Prometheus holds *n* (it scrapes every second; 10 s at most)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples = prom.query(unmatched)
            if samples and samples[0].value == n:
                return True
            time.sleep(0.2)
        return False

    # Paths product-api's profile has no route for, straight to its proxy as a caller's proxy sends them:
    # one, seen by Prometheus (a counter's first sample is not an increase), then six more.
    with httpx.Client(base_url=f"http://{product.inbound}", headers={"Host": product.authority}, timeout=10) as c:
        assert c.get("/no/such/route").status_code == 404
        assert scraped(1)
        for i in range(6):
            assert c.get(f"/no/such/route/{i}").status_code == 404
    assert scraped(7)  # counted once each, by the real proxy, scraped by the real Prometheus

    start = time.time()
    r = viz(shop, "routes", "deploy/product-api", "-n", "shop", "-t", f"{WINDOW_S}s", "-o", "json")
    end = time.time()
    assert r.returncode == 0, r.stderr
    rows = {row["route"]: row for row in json.loads(r.stdout)["deploy/product-api"]}
    assert set(rows) == {"GET /api/products/{productId}", "[DEFAULT]"}
    served = rows["GET /api/products/{productId}"]
    assert served["authority"] == "product-api-svc" and served["success"] == 1.0
    # The gateway calls product-api once per request it serves: the load generator's own count.
    at = (start + end) / 2
    sent = load.between(at - WINDOW_S, at)
    assert served["rps"] == pytest.approx(len(sent) / WINDOW_S, rel=0.10), (served, len(sent))
    assert served["latency_ms_p50"] <= served["latency_ms_p95"] <= served["latency_ms_p99"]
    assert rows["[DEFAULT]"]["rps"] > 0 and rows["[DEFAULT]"]["success"] == 1.0  # 404: a success (Linkerd)

    # price-api served every attempt the gateway made, retries included: what its proxy counted per class
    # is what the gateway's proxy counted as actual attempts (not the effective requests its retries
    # improved), both read from Prometheus at one instant (two commands a few seconds apart would each
    # see a different window of a load whose retries come in bursts).
    at = time.time()

    def by_class(promql: str) -> dict[str, float]:
        return {s.get("classification"): s.value for s in prom.query(f"sum({promql}) by (classification)", at=at)}

    served = by_class('route_response_total{direction="inbound",namespace="shop",deployment="price-api",'
                      'rt_route="GET /api/prices"}')
    attempts = by_class('route_actual_response_total{direction="outbound",namespace="shop",'
                        'deployment="product-gateway-api",dst=~"price-api-svc[.].*",rt_route="GET /api/prices"}')
    assert set(served) == set(attempts) == {"success", "failure"}, (served, attempts)
    for cls, n in attempts.items():  # (in flight, and the two proxies scraped up to a second apart)
        assert abs(served[cls] - n) <= max(30, 0.02 * n), (served, attempts)
    r = viz(shop, "routes", "deploy/price-api", "-n", "shop", "-t", f"{WINDOW_S}s", "-o", "json")
    (prices,) = [row for row in json.loads(r.stdout)["deploy/price-api"] if row["route"] == "GET /api/prices"]
    assert prices["authority"] == "price-api-svc" and prices["rps"] > 0 and 0 < prices["success"] < 1

    # The table: linkerd's columns, the served route first, [DEFAULT] last.
    r = viz(shop, "routes", "deploy/product-api", "-n", "shop", "-t", f"{WINDOW_S}s")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["ROUTE", "SERVICE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
    assert [line.split("  ")[0] for line in lines] == ["GET /api/products/{productId}", "[DEFAULT]"]
    assert all(line.split()[-6] == "product-api-svc" for line in lines[:1])


def test_edges_show_both_identities(busy_shop):
    shop, _ = busy_shop
    r = viz(shop, "edges", "deploy", "-o", "wide")
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["SRC", "DST", "SRC_NS", "DST_NS", "CLIENT_ID", "SERVER_ID", "SECURED"]
    edges = {(cells[0], cells[1]): cells for cells in (line.split() for line in lines)}
    for dst in ("product-api", "price-api"):
        cells = edges[("product-gateway-api", dst)]
        assert cells[2:] == ["shop", "shop", GATEWAY_ID, f"{dst}.shop.serviceaccount.identity.meshctl.cluster.local",
                             "\u221a"]
    r = viz(shop, "edges", "deploy", "-o", "json")
    assert all(e["client_id"] == GATEWAY_ID and e["no_tls_reason"] == "" for e in json.loads(r.stdout))


def test_every_resource_kind_answers(busy_shop):
    shop, _ = busy_shop
    url = shop.prometheus_url
    r = run_cli("viz", "stat", "all", "-n", "shop", "--prometheus-url", url)
    assert r.returncode == 0, r.stderr
    assert "deploy/product-api" in r.stdout and "po/price-api-0" in r.stdout and "svc/price-api-svc" in r.stdout
    r = run_cli("viz", "stat", "svc", "-n", "shop", "--prometheus-url", url, "-o", "json")
    assert {row["name"] for row in json.loads(r.stdout)} == {"product-api-svc", "price-api-svc"}
    r = run_cli("viz", "stat", "au", "-n", "shop", "--prometheus-url", url)
    assert "price-api-svc.shop.svc.cluster.local:8080" in r.stdout
    r = run_cli("viz", "stat", "ns", "-A", "--prometheus-url", url, "-o", "json")
    (ns,) = json.loads(r.stdout)
    assert ns["name"] == "shop" and ns["meshed"] == "3/3"
    # --to and --from select the traffic between two workloads.
    r = run_cli("viz", "stat", "deploy", "-n", "shop", "--to", "deploy/price-api", "--prometheus-url", url,
                "-o", "json")
    assert [row["name"] for row in json.loads(r.stdout)] == ["product-gateway-api"]
    r = run_cli("viz", "stat", "deploy", "-n", "shop", "--from", "deploy/product-gateway-api",
                "--prometheus-url", url, "-o", "json")
    assert sorted(row["name"] for row in json.loads(r.stdout)) == ["price-api", "product-api"]
    r = run_cli("viz", "stat", "deploy/price-api", "-n", "shop", "--prometheus-url", url, "-o", "json")
    assert [row["name"] for row in json.loads(r.stdout)] == ["price-api"]


def test_no_traffic_is_said_on_stderr(shop):
    r = run_cli("viz", "stat", "deploy", "-n", "nowhere", "--prometheus-url", shop.prometheus_url)
    assert r.returncode == 0 and r.stdout == "" and r.stderr.strip() == "No traffic found."
    r = run_cli("viz", "edges", "deploy", "-n", "nowhere", "--prometheus-url", shop.prometheus_url)
    assert r.returncode == 0 and r.stdout == "" and r.stderr.strip() == "No edges found."


def test_prometheus_faults_are_one_line_naming_the_url(shop):
    r = run_cli("viz", "stat", "deploy", "--prometheus-url", "http://127.0.0.1:1")
    assert r.returncode == 1
    assert r.stderr.splitlines() == ["Error: prometheus at http://127.0.0.1:1: cannot connect: connection refused"]
    url = f"{shop.prometheus_url}/not-prometheus"
    r = run_cli("viz", "stat", "deploy", "--prometheus-url", url)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"Error: prometheus at {url}: HTTP 404: 404 page not found"]


@pytest.mark.parametrize("args, message", [
    (("stat", "widgets"), "unknown resource type 'widgets'"),
    (("stat", "deploy", "-t", "10x"), "--time-window: expected a duration like 100ms, 10s or 1m30s, got '10x'"),
    (("stat", "deploy", "-t", "5s"), "--time-window: '5s' is shorter than the minimum of 15s"),
    (("stat", "deploy", "--to", "gizmo/x"), "--to: unknown resource type 'gizmo'"),
    (("routes", "au/x:80"), "authority cannot be the target of a routes query"),
    (("edges", "svc"), "resource type is not supported by edges: service"),
])
def test_usage_errors_exit_2_naming_the_value(args, message):
    r = run_cli("viz", *args, "--prometheus-url", "http://127.0.0.1:1")
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("Error: ") and message in line
