"""The demo's three sample APIs, run for real on loopback without the mesh."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from conftest import ROOT

SHOP = ROOT / "samples" / "apps" / "shop.py"


@pytest.fixture
def start():
    """start(*args, env=None) runs one sample API on an ephemeral port and returns the port; all stop at teardown."""
    procs: list[subprocess.Popen] = []

    def run(*args: str, env: dict | None = None) -> int:
        proc = subprocess.Popen([sys.executable, str(SHOP), *args, "--port", "0"], stderr=subprocess.PIPE, text=True,
                                env=env)
        procs.append(proc)
        line = proc.stderr.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        return int(m.group(1))

    yield run
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture
def shop(start):
    product_port = start("product")
    price_port = start("price")
    gateway_port = start("gateway", "--product-api", f"http://127.0.0.1:{product_port}",
                         "--price-api", f"http://127.0.0.1:{price_port}")
    return {"gateway": gateway_port, "product": product_port, "price": price_port}


def test_gateway_aggregates_product_and_price(shop):
    with httpx.Client(base_url=f"http://127.0.0.1:{shop['gateway']}") as client:
        r = client.get("/api/products/2")
        assert r.status_code == 200
        assert r.json() == {"productId": 2, "name": "Burr grinder",
                            "description": "A conical burr grinder with 40 grind settings.", "price": 189.5}
        assert client.get("/api/products/99").status_code == 404
        assert client.get("/nope").status_code == 404


def test_price_api_validates_query(shop):
    with httpx.Client(base_url=f"http://127.0.0.1:{shop['price']}") as client:
        assert client.get("/api/prices", params={"productId": "1"}).json() == {"productId": 1, "price": 499.0}
        assert client.get("/api/prices", params={"productId": "x"}).status_code == 400


def test_failure_rate_knob_fails_requests(start):
    port = start("price", "--failure-rate", "1.0")
    r = httpx.get(f"http://127.0.0.1:{port}/api/prices?productId=1")
    assert r.status_code == 500


def test_gateway_reads_the_walkthroughs_environment(start):
    # samples/shop/deployments.yaml (and the walkthrough) give the gateway its upstreams as
    # Product_API_Host and Price_API_Host.
    import os

    product_port = start("product")
    price_port = start("price")
    env = {**os.environ, "Product_API_Host": f"http://127.0.0.1:{product_port}",
           "Price_API_Host": f"http://127.0.0.1:{price_port}"}
    port = start("gateway", env=env)
    body = httpx.get(f"http://127.0.0.1:{port}/api/products/3", timeout=5).json()
    assert body == {"productId": 3, "name": "Milk jug", "description": "A 600 ml stainless steel milk frothing jug.",
                    "price": 19.9}
