"""The pure parts of ``meshctl.viz.tap``: resources, linkerd's line format, top's table, profiles from traffic."""

from __future__ import annotations

import pytest

from meshctl.demo import state
from meshctl.viz import tap

TARGET = tap.TapTarget("shop", "deployment", "web", "web-0", ("127.0.9.2", 4190), None)


def mesh() -> state.LocalMesh:
    def workload(name, host, port):
        return state.LocalWorkload(namespace="shop", kind="deployment", name=name, pod=f"{name}-0",
                                   service=f"{name}-svc", identity=f"{name}.shop.serviceaccount.identity.x",
                                   app=f"{host}:{port}",
                                   proxy=state.ProxyAddrs(admin=f"{host}:4191", control=f"{host}:4190",
                                                          inbound=f"{host}:4143", outbound=f"{host}:4140"))

    return state.LocalMesh(namespace="shop", prometheus_url="http://127.0.0.1:9", dashboard_url=None,
                           gateway_url="http://127.0.9.2:4143", tap=None,
                           workloads=(workload("web", "127.0.9.2", 5000), workload("db", "127.0.9.3", 9090)))


@pytest.mark.parametrize("text, kind, name", [
    ("deploy/web", "deployment", "web"), ("deployment/web", "deployment", "web"), ("po/web-0", "pod", "web-0"),
    ("ns/shop", "namespace", "shop"), ("deploy", "deployment", None), ("svc/web-svc", "service", "web-svc"),
])
def test_resources(text, kind, name):
    assert tap.parse_resource(text) == tap.Resource(kind, name)


@pytest.mark.parametrize("text, message", [("au/web:80", "cannot tap authority"), ("rs/web", "cannot tap replicaset"),
                                           ("nope/web", "unknown resource type 'nope'"), ("ns", "ns needs a name")])
def test_bad_resources_are_usage_errors(text, message):
    with pytest.raises(tap.UsageError, match=message) as info:
        tap.parse_resource(text)
    assert info.value.exit_code == 2


def test_resolver_targets_destinations_and_peers():
    r = tap.LocalResolver(mesh())
    assert [t.pod for t in r.targets(tap.parse_resource("ns/shop"), None)] == ["web-0", "db-0"]
    assert [t.control for t in r.targets(tap.parse_resource("pod/db-0"), None)] == [("127.0.9.3", 4190)]
    assert [t.pod for t in r.targets(tap.parse_resource("svc/db-svc"), None)] == ["db-0"]
    assert r.targets(tap.parse_resource("deploy/web"), None)[0].identity is None  # no tap credentials: no TLS
    assert r.destination_addrs(tap.parse_resource("deploy/db"), None) == ["127.0.9.3:4143", "127.0.9.3:9090"]
    assert r.peer("127.0.9.3:55555").workload == "db"
    with pytest.raises(tap.MeshctlError, match=r"no meshed deploy/nope in namespace shop .*known: deploy/db, "
                                               r"deploy/web"):
        r.targets(tap.parse_resource("deploy/nope"), None)
    with pytest.raises(tap.MeshctlError, match="no meshed deploy/web in namespace other"):
        r.targets(tap.parse_resource("deploy/web"), "other")


REQ = {"event": "req", "id": 7, "direction": "outbound", "protocol": "HTTP/1.1", "src": "127.0.9.2:41000",
       "dst": "127.0.9.3:4143", "tls": True, "client_id": None, "server_id": "db.shop.serviceaccount.identity.x",
       "method": "GET", "scheme": "http", "authority": "db-svc.shop.svc.cluster.local:9090",
       "path": "/api/products/3", "route": "GET /api/products/{id}", "ts": 1.0}
RSP = {"event": "rsp", "id": 7, "status": 200, "latency_ms": 1.5}
END = {"event": "end", "id": 7, "grpc_status": None, "error": None, "duration_ms": 0.068, "response_bytes": 4560}


def test_linkerd_line_format():
    f = tap.EventFormatter()
    common = "id=0:7 proxy=out src=127.0.9.2:41000 dst=127.0.9.3:4143 tls=true"
    assert f.format(TARGET, REQ) == (f"req {common} :method=GET :authority=db-svc.shop.svc.cluster.local:9090 "
                                     ":path=/api/products/3")
    assert f.format(TARGET, RSP) == f"rsp {common} :status=200 latency=1500µs"
    assert f.format(TARGET, END) == f"end {common} duration=68µs response-length=4560B"
    assert f.open == {}  # forgotten at end
    assert f.format(TARGET, {**END, "grpc_status": 14}).startswith("end id=0:7 proxy=? grpc-status=Unavailable ")
    assert " error=upstream reset " in f.format(TARGET, {**END, "error": "upstream reset"})


def test_wide_names_both_ends_and_identities():
    f = tap.EventFormatter(resolver=tap.LocalResolver(mesh()), wide=True)
    line = f.format(TARGET, REQ)
    assert line.endswith(" :route=GET /api/products/{id} src_deploy=web src_pod=web-0 src_ns=shop "
                         "dst_deploy=db dst_pod=db-0 dst_ns=shop server_id=db.shop.serviceaccount.identity.x")


def test_top_aggregates_sorts_and_rates():
    table = tap.TopTable(tap.LocalResolver(mesh()))
    for i in range(3):
        table.add(TARGET, {**REQ, "id": i})
        table.add(TARGET, {**RSP, "id": i, "latency_ms": [2.0, 1.0, 30.0][i], "status": 200 if i else 503})
        table.add(TARGET, {**END, "id": i})
    table.add(TARGET, {**REQ, "id": 9, "path": "/api/prices?productId=1"})
    rows = table.sorted_rows()
    assert [(r.source, r.destination, r.path, r.count) for r in rows] == [
        ("web-0", "db-0", "/api/products/3", 3), ("web-0", "db-0", "/api/prices", 1)]
    assert tap.TopTable.cells(rows[0]) == ("web-0", "db-0", "GET", "/api/products/3", "3", "1.0ms", "30ms", "30ms",
                                           "66.67%")
    assert tap.TopTable.cells(rows[1])[5:] == ("-", "-", "-", "-")


@pytest.mark.parametrize("path, template", [
    ("/api/products/42", "/api/products/{id}"), ("/api/products/42?x=1", "/api/products/{id}"),
    ("/u/0f8fad5b-d9cb-469f-a165-70867728950e/cart", "/u/{id}/cart"), ("/blob/3f786850e387550fdab836ed7e6dc881de23001b",
                                                                        "/blob/{id}"),
    ("/api/prices", "/api/prices"), ("/v2/items", "/v2/items"), ("/", "/"),
])
def test_route_templates(path, template):
    assert tap.route_template(path) == template


def test_profile_from_requests_keeps_the_most_requested_routes():
    seen = [("GET", f"/api/products/{i}") for i in range(10)] + [("post", "/api/orders")] * 3 + [("GET", "/healthz")]
    profile = tap.profile_from_requests(seen, name="web-svc.shop.svc.cluster.local", namespace="shop", route_limit=2)
    assert profile.to_dict()["spec"]["routes"] == [
        {"name": "POST /api/orders", "condition": {"method": "POST", "pathRegex": "/api/orders"}},
        {"name": "GET /api/products/{id}", "condition": {"method": "GET", "pathRegex": "/api/products/[^/]*"}}]
    assert profile.route_for("GET", "/api/products/77").name == "GET /api/products/{id}"
