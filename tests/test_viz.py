"""Golden metrics from scrapes: quantiles as Prometheus computes them, windows, routes, edges."""

from __future__ import annotations

import math

import pytest

from meshctl import viz

SCRAPE = """\
# TYPE response_total counter
response_total{direction="inbound",authority="a:80",target_addr="1.2.3.4:80",tls="true",classification="success",status_code="200",deployment="web"} 90
response_total{direction="inbound",authority="a:80",target_addr="1.2.3.4:80",tls="no_identity",classification="failure",status_code="500",deployment="web"} 10
response_total{direction="outbound",authority="b:80",target_addr="5.6.7.8:80",tls="true",server_id="b.ns.serviceaccount.identity.meshctl.cluster.local",classification="success",status_code="200"} 40
# TYPE response_latency_ms histogram
response_latency_ms_bucket{direction="inbound",le="1"} 10
response_latency_ms_bucket{direction="inbound",le="10"} 90
response_latency_ms_bucket{direction="inbound",le="100"} 100
response_latency_ms_bucket{direction="inbound",le="+Inf"} 100
response_latency_ms_count{direction="inbound"} 100
response_latency_ms_sum{direction="inbound"} 500
# TYPE route_response_total counter
route_response_total{direction="outbound",dst="b:80",rt_route="GET /x",classification="success",status_code="200"} 40
# TYPE route_actual_response_total counter
route_actual_response_total{direction="outbound",dst="b:80",rt_route="GET /x",classification="success",status_code="200"} 40
route_actual_response_total{direction="outbound",dst="b:80",rt_route="GET /x",classification="failure",status_code="500"} 10
"""


def test_histogram_quantile_matches_prometheus_interpolation():
    buckets = [(1.0, 10.0), (10.0, 90.0), (100.0, 100.0), (math.inf, 100.0)]
    # rank 50 falls in (1, 10]: 1 + 9 * (50 - 10) / (90 - 10) = 5.5
    assert viz.histogram_quantile(0.5, buckets) == pytest.approx(5.5)
    # rank 99 in (10, 100]: 10 + 90 * (99 - 90) / 10 = 91
    assert viz.histogram_quantile(0.99, buckets) == pytest.approx(91.0)
    # a rank in +Inf gives the highest finite bound
    assert viz.histogram_quantile(0.99, [(1.0, 1.0), (math.inf, 100.0)]) == 1.0
    assert viz.histogram_quantile(0.5, []) is None
    assert viz.histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None


def test_window_subtracts_and_survives_counter_reset():
    before = viz.Scrape(at=10.0, series={("x", ()): 5.0, ("y", ()): 100.0})
    after = viz.Scrape(at=20.0, series={("x", ()): 15.0, ("y", ()): 3.0})  # y restarted
    window = after.minus(before)
    assert window.at == 10.0
    assert window.series == {("x", ()): 10.0, ("y", ()): 3.0}


def test_workload_stat():
    scrape = viz.parse_scrape(SCRAPE, at=0.0)
    window = viz.Scrape(at=10.0, series=scrape.series)
    (stat,) = viz.workload_stats({"web": window})
    assert stat.requests == 100 and stat.success_rate == pytest.approx(0.9)
    assert stat.rps == pytest.approx(10.0)
    assert stat.meshed_share == pytest.approx(0.9)
    assert stat.p50_ms == pytest.approx(5.5)
    assert stat.to_dict()["successRate"] == 0.9


def test_route_stat_shows_what_retries_bought():
    window = viz.Scrape(at=5.0, series=viz.parse_scrape(SCRAPE, at=0.0).series)
    (route,) = viz.route_stats(window)
    assert route.name == "GET /x [b:80]"
    assert route.success_rate == 1.0
    assert route.actual_requests == 50 and route.actual_success_rate == pytest.approx(0.8)


def test_edges_carry_the_proved_identity():
    window = viz.Scrape(at=5.0, series=viz.parse_scrape(SCRAPE, at=0.0).series)
    (edge,) = viz.edges({"web": window}, {"web": "web.ns.serviceaccount.identity.meshctl.cluster.local"})
    assert edge.dst == "b:80" and edge.requests == 40 and edge.secured
    assert edge.server_id == "b.ns.serviceaccount.identity.meshctl.cluster.local"
