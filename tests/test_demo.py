"""``meshctl demo`` end to end: real processes, real mTLS, real metrics, on loopback."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_demo_meshes_the_shop_and_retries_hide_price_failures():
    r = run_cli("demo", "run", "--duration", "4s", "--rps", "15", "--price-failure-rate", "0.3",
                "--address-prefix", "127.0.11", "-o", "json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "price-api-proxy is ready (certificate issued by the identity service)" in r.stderr
    data = json.loads(r.stdout)
    codes = data["ingress"]["statusCodes"]
    assert sum(codes.values()) == 60
    # Retries under the budget turn 30% price-api failures into (almost) none at the gateway.
    assert codes.get("200", 0) >= 57, codes
    # The summary is meshctl viz's, from the run's own Prometheus.
    stat = {s["name"]: s for s in data["stat"]}
    assert set(stat) == {"product-gateway-api", "product-api", "price-api"}
    assert stat["price-api"]["success"] < 0.9  # the injected failures are real
    assert stat["product-gateway-api"]["success"] >= 0.95
    assert all(s["meshed"] == "1/1" for s in stat.values())
    routes = {r["route"]: r for r in data["routes"]["deploy/product-gateway-api"]}
    prices = routes["GET /api/prices"]
    assert prices["actual_rps"] > prices["effective_rps"]  # retries happened, and are counted
    assert prices["actual_success"] < prices["effective_success"]
    # Traffic between the proxies is mTLS, each side's identity proved.
    edges = {e["dst"]: e for e in data["edges"]}
    assert edges["price-api"]["server_id"] == "price-api.shop.serviceaccount.identity.meshctl.cluster.local"
    assert edges["product-api"]["server_id"] == "product-api.shop.serviceaccount.identity.meshctl.cluster.local"
    assert all(e["client_id"] == "product-gateway-api.shop.serviceaccount.identity.meshctl.cluster.local"
               and e["no_tls_reason"] == "" for e in data["edges"])


def test_demo_refuses_bad_flags_in_one_line():
    r = run_cli("demo", "run", "--address-prefix", "10.0.0")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["Error: --address-prefix: expected three octets inside 127.0.0.0/8 "
                                             "(e.g. 127.0.10), got '10.0.0'"]
    r = run_cli("demo", "run", "--duration", "soon")
    assert r.returncode == 2 and "--duration" in r.stderr


def test_demo_outside_a_checkout_says_what_is_missing(tmp_path):
    from meshctl import demo
    from meshctl.errors import MeshctlError

    with pytest.raises(MeshctlError, match="needs the project's samples/ directory"):
        demo.check_samples(tmp_path)
    assert demo.check_samples() == demo.SAMPLES  # this checkout has them
