"""A real Prometheus (Debian's binary) scraping the real proxies of the demo's shop, on loopback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

SHOP_PREFIX = "127.0.12"  # test_demo.py uses 127.0.11; each user of the shop its own /24


@dataclasses.dataclass(frozen=True, slots=True)
class Shop:
    run: object  # meshctl.demo.DemoRun
    prometheus: object  # meshctl.viz.localprom.LocalPrometheus
    dir: Path

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url


def scrape_targets(plan):
    from meshctl.demo import NAMESPACE
    from meshctl.viz import localprom

    return [localprom.proxy_target(w.admin, namespace=NAMESPACE, pod=f"{w.name}-0", kind="deployment", name=w.name)
            for w in plan.workloads]


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    """The three APIs meshed (mTLS, profiles, retries) with a Prometheus scraping every proxy each second.

    price-api fails 30% of its requests, so retries and failures both show.
    """
    from meshctl import demo
    from meshctl.viz import localprom

    workdir = tmp_path_factory.mktemp("shop")
    plan = demo.Plan(prefix=SHOP_PREFIX, price_failure_rate=0.3)
    with demo.DemoRun(plan, workdir) as run:
        localprom.write_config(workdir / "prometheus.yml", scrape_targets(plan), scrape_interval="1s")
        with localprom.start(workdir / "prometheus", config=workdir / "prometheus.yml") as prom:
            prom.wait_scraped(len(plan.workloads))
            yield Shop(run=run, prometheus=prom, dir=workdir)
