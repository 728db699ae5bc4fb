"""The pure parts of meshctl.viz: resource names, PromQL built from them, tables and JSON from rows."""

from __future__ import annotations

import httpx
import pytest

from meshctl.errors import MeshctlError, UsageError
from meshctl.viz import queries, resources, tables
from meshctl.viz.promclient import PrometheusClient
from meshctl.viz.queries import EdgeRow, RouteRow, StatRow
from meshctl.viz.resources import Resource


def test_resources_parse_as_kubectl_and_linkerd_take_them():
    assert resources.parse(["deploy"], "shop") == [Resource("deployment", None, "shop")]
    assert resources.parse(["deploy/web", "po/web-0"], "shop") == [Resource("deployment", "web", "shop"),
                                                                   Resource("pod", "web-0", "shop")]
    assert resources.parse(["svc", "a", "b"], None) == [Resource("service", "a"), Resource("service", "b")]
    assert str(Resource("statefulset", "db")) == "sts/db"
    assert Resource("job", "x").label == "k8s_job"  # "job" is Prometheus' own label
    with pytest.raises(UsageError, match="unknown resource type 'widgets'"):
        resources.parse(["widgets"], None)
    with pytest.raises(UsageError, match="mixed TYPE/NAME and TYPE NAME"):
        resources.parse(["deploy/a", "b"], None)
    with pytest.raises(UsageError, match="'all' is not supported as a filter"):
        resources.parse_one("all", "ns", flag="--to")
    assert resources.parse_window("1m30s") == 90
    with pytest.raises(UsageError, match="shorter than the minimum of 15s"):
        resources.parse_window("10s")
    assert UsageError("x").exit_code == 2


def test_stat_queries_are_linkerds():
    inbound = queries._stat_query(Resource("deployment", "web", "shop"), to=None, from_=None)
    assert inbound.sel() == '{deployment="web", direction="inbound", namespace="shop"}'
    assert inbound.group_by == ("namespace", "deployment") and inbound.tcp_peer == "src"
    to = queries._stat_query(Resource("deployment", None, "shop"), to=Resource("service", "api", "shop"), from_=None)
    assert to.sel() == ('{deployment!="", direction="outbound", dst_namespace="shop", dst_service="api", '
                        'namespace="shop"}')
    frm = queries._stat_query(Resource("pod", None, "shop"), to=None, from_=Resource("deployment", "web", "shop"))
    assert frm.group_by == ("dst_namespace", "dst_pod")
    assert frm.sel() == '{deployment="web", direction="outbound", dst_namespace="shop", dst_pod!="", namespace="shop"}'
    svc = queries._stat_query(Resource("service", None, None), to=None, from_=None)
    assert svc.sel() == '{direction="outbound", dst_service!=""}'
    with pytest.raises(UsageError, match="--to and --from cannot be used together"):
        queries._stat_query(Resource("pod"), to=Resource("pod"), from_=Resource("pod"))


def test_label_selectors_become_matchers_on_pod_labels():
    assert queries.selector_matchers("app=web,tier!=db,app.kubernetes.io/part-of==shop") == [
        'app="web"', 'tier!="db"', 'app_kubernetes_io_part_of="shop"']
    assert queries.selector_matchers("env in (a, b),!legacy,canary") == ['env=~"a|b"', 'legacy=""', 'canary!=""']
    with pytest.raises(UsageError, match="cannot parse"):
        queries.selector_matchers("a=b=c")
    assert queries.matchers({"a": 'x"y', "b": None}) == '{a="x\\"y"}'


ROW = StatRow(namespace="shop", kind="deployment", name="product-gateway-api", window_s=60, success_count=594,
              failure_count=6, latency_ms_p50=4.5, latency_ms_p95=48.0, latency_ms_p99=95.4, meshed_pods=1,
              total_pods=1, tcp_open_connections=3, tcp_read_bytes_rate=1024.0, tcp_write_bytes_rate=2048.0)


def test_stat_table_and_json():
    idle = StatRow(namespace="shop", kind="deployment", name="idle", window_s=60, meshed_pods=0, total_pods=1)
    assert tables.stat_table([ROW, idle]) == (
        "NAME                  MESHED   SUCCESS       RPS   LATENCY_P50   LATENCY_P95   LATENCY_P99   TCP_CONN\n"
        "product-gateway-api      1/1    99.00%   10.0rps         4.5ms          48ms          95ms          3\n"
        "idle                     0/1         -         -             -             -             -          -\n")
    wide = tables.stat_table([ROW], wide=True, all_namespaces=True).splitlines()
    assert wide[0].split()[0] == "NAMESPACE" and wide[0].endswith("READ_BYTES/SEC   WRITE_BYTES/SEC")
    assert wide[1].endswith("1024.0B/s         2048.0B/s")
    (entry,) = tables.stat_json([ROW])
    assert entry == {"namespace": "shop", "kind": "deployment", "name": "product-gateway-api", "meshed": "1/1",
                     "success": 0.99, "rps": 10.0, "latency_ms_p50": 4.5, "latency_ms_p95": 48.0,
                     "latency_ms_p99": 95.4, "tcp_open_connections": 3, "tcp_read_bytes_rate": 1024.0,
                     "tcp_write_bytes_rate": 2048.0}
    # stat all: one table per kind, names prefixed with the kind.
    pod = StatRow(namespace="shop", kind="pod", name="web-0", window_s=60, meshed_pods=1, total_pods=1)
    text = tables.stat_table([ROW, pod])
    assert "deploy/product-gateway-api" in text and "\n\nNAME" in text and "po/web-0" in text


def test_routes_table_wide_and_default_row():
    prices = RouteRow(resource="deploy/gw", route="GET /api/prices", authority="price-api-svc",
                      dst="price-api-svc.shop.svc.cluster.local", window_s=10, success_count=100, failure_count=0,
                      actual_success_count=100, actual_failure_count=40, latency_ms_p50=2, latency_ms_p95=20,
                      latency_ms_p99=40)
    default = RouteRow(resource="deploy/gw", route="[DEFAULT]", authority="price-api-svc",
                       dst="price-api-svc.shop.svc.cluster.local", window_s=10, actual_success_count=0,
                       actual_failure_count=0)
    lines = tables.routes_table([prices, default], wide=True).splitlines()
    assert lines[1].split() == ["GET", "/api/prices", "price-api-svc", "100.00%", "10.0rps", "71.43%", "14.0rps",
                                "2.0ms", "20ms", "40ms"]
    assert lines[2].split() == ["[DEFAULT]", "price-api-svc"] + ["-"] * 7
    data = tables.routes_json([prices], wide=True)
    assert data["deploy/gw"][0]["actual_success"] == pytest.approx(0.7143)
    other = RouteRow(resource="deploy/other", route="[DEFAULT]", authority="x", dst="x", window_s=10)
    assert tables.routes_table([prices, other]).startswith("==> deploy/gw <==\n")


def test_edges_table():
    secured = EdgeRow(kind="deployment", src="gw", src_namespace="shop", dst="api", dst_namespace="shop",
                      client_id="gw.shop.serviceaccount.identity.meshctl.cluster.local",
                      server_id="api.shop.serviceaccount.identity.meshctl.cluster.local", no_tls_reason="")
    plain = EdgeRow(kind="deployment", src="gw", src_namespace="shop", dst="legacy", dst_namespace="old",
                    client_id="", server_id="", no_tls_reason="Not Provided By Service Discovery")
    assert tables.edges_table([secured, plain]) == (
        "SRC   DST      SRC_NS   DST_NS   SECURED\n"
        "gw    api      shop     shop     \u221a\n"
        "gw    legacy   shop     old      Not Provided By Service Discovery\n")
    wide = tables.edges_table([secured], wide=True).splitlines()[1].split()
    assert wide[4:6] == [secured.client_id, secured.server_id]


def _client(handler) -> PrometheusClient:
    return PrometheusClient("http://prom.example:9090", transport=httpx.MockTransport(handler))


def test_prometheus_errors_name_the_url_and_what_it_said():
    bad = _client(lambda req: httpx.Response(400, json={"status": "error", "errorType": "bad_data",
                                                         "error": "parse error at char 3"}))
    with pytest.raises(MeshctlError, match=r"^prometheus at http://prom.example:9090: HTTP 400: bad_data: parse error"):
        bad.query("sum(")
    proxied = _client(lambda req: httpx.Response(503, json={"kind": "Status", "message": "no endpoints available"}))
    with pytest.raises(MeshctlError, match="HTTP 503: no endpoints available$"):
        proxied.query("up")
    html = _client(lambda req: httpx.Response(502, text="<html>\n bad gateway </html>"))
    with pytest.raises(MeshctlError, match="HTTP 502: <html> bad gateway </html>$"):
        html.query("up")
    ok = _client(lambda req: httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"a": "1"}, "value": [1.0, "NaN"]}, {"metric": {}, "value": [1.0, "2.5"]}]}}))
    first, second = ok.query("x")
    assert first.get("a") == "1" and first.value != first.value and second.value == 2.5
