"""Class 6: unbounded metrics across labels.

20,000 requests with distinct Host values made 30,000 series and a 4.7 MB scrape: the per-label cap
(``MESHCTL_PROXY_MAX_AUTHORITY_LABELS``) bounded values, not series, and each admitted value brought
~30 series of its own.  ``MESHCTL_PROXY_MAX_METRIC_SERIES`` now caps the total across families;
what a refused series would have counted is counted in the family's overflow series.  Checked on
what Prometheus would scrape: the /metrics text of a real proxy, parsed line by line.
"""

from __future__ import annotations

import socket

import pytest

from proxy.conftest import metric_sum, parse_metrics

from .peers import H2Client
from .test_c07_pools import _keepalive_requests, loopback_spellings


def _series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _closed_loopback_port() -> int:
    """A loopback port nothing listens on: connects are refused at once (no upstream to slow the test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit; the kernel does not hand it out again at once


def test_thousands_of_hosts_through_a_proxy_stay_within_the_series_cap(start_proxy):
    """The issue's attack end to end, scaled to run in seconds: 1,500 Hosts against a cap of 1,000 series
    (uncapped, the 1,000 admitted authorities alone made ~35,000 series here)."""
    p = start_proxy(MESHCTL_PROXY_MAX_METRIC_SERIES="1000")
    port = _closed_loopback_port()
    hosts = [f"{s}:{port}" for s in loopback_spellings(1500)]
    statuses = _keepalive_requests(p.outbound, hosts, batch=250)
    assert len(statuses) == 1500 and set(statuses) == {502}  # refused upstream: the proxy answers
    status, text = p.admin_get("/metrics")
    assert status == 200
    series = _series(text)
    m = parse_metrics(text)
    assert m[("metrics_series_limit", frozenset())] == 1000
    assert m[("metrics_series", frozenset())] <= 1000
    # The cap holds whatever the labels: at most the limit plus the fixed overflow and process series.
    assert len(series) <= 1000 + 200, len(series)
    # Nothing is lost: every request is counted, the folded ones under authority="overflow".
    assert metric_sum(m, "request_total", direction="outbound") == 1500
    assert metric_sum(m, "request_total", direction="outbound", authority="overflow") > 1000
    assert metric_sum(m, "response_total", direction="outbound", status_code="502") + metric_sum(
        m, "response_total", direction="outbound", status_code="overflow") == 1500
    assert m[("metrics_series_refused_total", frozenset())] > 0
    # A duplicate series would make Prometheus refuse the whole scrape.
    assert len(series) == len({line.rsplit(" ", 1)[0] for line in series})


def test_twenty_thousand_hosts_make_at_most_the_default_cap_of_series():
    """The issue's figures on the registry itself, as the request path labels a request (transport.exchange.http_series):
    20,000 Hosts made 30,000 series and a 4.7 MB scrape; the default cap is 10,000 series."""
    from meshctl_proxy.model import ConnectionContext
    from meshctl_proxy.transport.exchange import http_series
    from meshctl_proxy.telemetry.metrics import Metrics

    metrics = Metrics(pod_labels={"namespace": "shop", "pod": "web-5d9c8b7f6-x2x7q", "deployment": "web"})
    ctx = ConnectionContext("outbound", ("127.0.0.1", 40000), ("127.0.0.1", 4140), None)
    for i in range(20_000):
        authority = f"h{i}.example:80"
        stats = http_series(metrics, ctx, authority, None, None)
        stats.requests += 1
        stats.response(502, "failure", 0.5)
        metrics.tcp("outbound", "dst", authority, authority, "no_identity").opened += 1
    text = metrics.render().decode()
    series = _series(text)
    m = parse_metrics(text)
    assert len(series) <= 10_000 + 200, len(series)
    assert len(text) < 2_500_000, len(text)  # ~210 bytes a series with the pod labels
    assert metric_sum(m, "request_total") == 20_000
    assert metric_sum(m, "tcp_open_total") == 20_000


def test_a_small_cap_holds_across_http1_http2_and_tcp_series(start_proxy, upstream, h2_upstream):
    p = start_proxy(MESHCTL_PROXY_MAX_METRIC_SERIES="600")
    spellings = loopback_spellings(150)
    assert _keepalive_requests(p.outbound, [f"{s}:{upstream.port}" for s in spellings]) == [200] * 150
    with H2Client(p.outbound) as client:
        for s in spellings:
            sid = client.request([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                  (":authority", f"{s}:{h2_upstream.port}")])
            assert client.answer(sid).status == 200
    text = p.admin_get("/metrics")[1]
    m = parse_metrics(text)
    assert m[("metrics_series", frozenset())] <= 600
    assert len(_series(text)) <= 600 + 200
    assert len(upstream.requests) == 150 and len(h2_upstream.requests) == 150  # the cap drops no traffic
    assert metric_sum(m, "request_total", direction="outbound") == 300
    assert metric_sum(m, "request_total", direction="outbound", authority="overflow") > 0
    # The first hosts keep their own series; the last ones were folded.
    first = f"{spellings[0]}:{upstream.port}"
    last = f"{spellings[-1]}:{h2_upstream.port}"
    assert metric_sum(m, "request_total", authority=first) == 1
    assert metric_sum(m, "request_total", authority=last) == 0


def test_upstream_statuses_cannot_grow_one_label_set_past_the_cap():
    """An upstream answering every status there is: the response and histogram series fold too."""
    from meshctl_proxy.telemetry.metrics import Metrics

    metrics = Metrics(max_series=400)
    stats = metrics.http("outbound", "web:80", "10.0.0.1:80", "no_identity")
    for status in range(100, 600):
        stats.requests += 1
        stats.response(status, "failure" if status >= 500 else "success", 1.0)
    text = metrics.render().decode()
    m = parse_metrics(text)
    assert m[("metrics_series", frozenset())] <= 400
    assert len(_series(text)) <= 400 + 100
    assert metric_sum(m, "response_total") == 500
    assert metric_sum(m, "response_total", status_code="overflow") > 0


def test_grpc_successes_and_failures_of_one_status_make_one_histogram():
    """Two classes of one status (gRPC: 200 with grpc-status 0 and 5) must not repeat a histogram series."""
    from meshctl_proxy.telemetry.metrics import Metrics

    metrics = Metrics()
    stats = metrics.http("inbound", "web:80", "10.0.0.1:80", "no_identity")
    stats.response(200, "success", 1.0)
    stats.response(200, "failure", 7.0)
    series = _series(metrics.render().decode())
    names = [line.rsplit(" ", 1)[0] for line in series]
    assert len(names) == len(set(names))
    m = parse_metrics(metrics.render().decode())
    assert metric_sum(m, "response_latency_ms_count", status_code="200") == 2


@pytest.mark.parametrize("family", ["route_request_total", "route_actual_request_total"])
def test_route_series_count_against_the_same_cap(family):
    from meshctl_proxy.telemetry.metrics import Metrics
    from meshctl_proxy.telemetry.route_metrics import RouteMetrics

    metrics = Metrics(max_series=300)
    routes = RouteMetrics(series=metrics.series)
    metrics.extra_renderers.append(routes.render)
    table = routes.logical if family == "route_request_total" else routes.actual
    for i in range(1000):
        st = table("outbound", f"svc-{i}.shop.svc.cluster.local:80", "[DEFAULT]")
        st.requests += 1
        st.response(200, "success", 1.0)
    m = parse_metrics(metrics.render().decode())
    assert m[("metrics_series", frozenset())] <= 300
    assert metric_sum(m, family) == 1000
    assert metric_sum(m, family, dst="overflow") > 0


def test_inbound_authorization_series_per_port_count_against_the_cap():
    """Every inbound port is redirected to the proxy: a port scan must not make a series per port."""
    from meshctl_proxy.policy.authorization import AuthzStats, Decision
    from meshctl_proxy.telemetry.metrics import Metrics

    metrics = Metrics(max_series=100)
    authz = AuthzStats(metrics.series)
    metrics.extra_renderers.append(authz.render)
    for port in range(1, 5001):
        authz.count("tcp", Decision(False, "scan"), port)
    m = parse_metrics(metrics.render().decode())
    assert m[("metrics_series", frozenset())] <= 100
    assert metric_sum(m, "inbound_tcp_authz_deny_total") == 5000
    assert metric_sum(m, "inbound_tcp_authz_deny_total", srv_port="overflow") == 4900
