"""route_* families: Linkerd's names and labels, logical vs actual, label budget."""

from __future__ import annotations

from meshctl_proxy.telemetry.route_metrics import RouteMetrics


def test_render_uses_linkerd_names_and_labels():
    m = RouteMetrics(pod_labels=(("namespace", "shop"), ("pod", "web-0")))
    s = m.logical("outbound", "web.shop.svc.cluster.local:8080", "GET /items/{id}")
    s.requests += 1
    s.response(200, "success", 12.0)
    a = m.actual("outbound", "web-v2.shop.svc.cluster.local:8080", "GET /items/{id}")
    a.requests += 2
    a.response(500, "failure", 3.0)
    a.response(200, "success", 9.0)
    text = m.render()
    base = 'direction="outbound",dst="web.shop.svc.cluster.local:8080",rt_route="GET /items/{id}",namespace="shop",pod="web-0"'
    assert f"route_request_total{{{base}}} 1\n" in text
    assert f'route_response_total{{{base},classification="success",status_code="200"}} 1\n' in text
    assert f'route_response_latency_ms_bucket{{{base},status_code="200",le="10"}} 0\n' in text
    assert f'route_response_latency_ms_bucket{{{base},status_code="200",le="20"}} 1\n' in text
    assert f'route_response_latency_ms_bucket{{{base},status_code="200",le="+Inf"}} 1\n' in text
    assert f"route_response_latency_ms_count{{{base},status_code=\"200\"}} 1\n" in text
    actual = base.replace("dst=\"web.", "dst=\"web-v2.")
    assert f"route_actual_request_total{{{actual}}} 2\n" in text
    assert f'route_actual_response_total{{{actual},classification="failure",status_code="500"}} 1\n' in text
    for family in ("route_request_total", "route_response_total", "route_response_latency_ms",
                   "route_actual_request_total", "route_actual_response_total", "route_actual_response_latency_ms"):
        kind = "histogram" if family.endswith("_ms") else "counter"
        assert f"# TYPE {family} {kind}\n" in text


def test_dst_values_from_the_network_are_bounded():
    m = RouteMetrics(max_dst=2)
    for i in range(5):
        m.logical("outbound", f"s{i}.ns.svc.cluster.local:80", "[DEFAULT]").requests += 1
    text = m.render()
    assert 'dst="overflow"' in text and "route_request_total{" in text
    assert text.count("route_request_total{") == 3


def test_label_values_are_escaped():
    m = RouteMetrics()
    m.logical("outbound", "a:80", 'GET /"quoted"\\').requests += 1
    assert 'rt_route="GET /\\"quoted\\"\\\\"' in m.render()
