"""The labels the queries and dashboards rely on: what the proxy exports and the destination gives it."""

from __future__ import annotations

from meshctl.k8s.discovery import pod_owner
from meshctl_proxy.model import Response
from meshctl_proxy.telemetry.metrics import Metrics


def _series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_response_total_carries_grpc_status_and_outbound_dst_labels():
    m = Metrics(pod_labels={"namespace": "shop", "pod": "web-0", "deployment": "web"})
    dst = (("deployment", "api"), ("namespace", "shop"), ("pod", "api-0"), ("service", "api-svc"))
    stats = m.http("outbound", "api-svc.shop.svc.cluster.local:80", "10.0.0.1:80", "true",
                   "api.shop.serviceaccount.identity.meshctl.cluster.local", dst)
    stats.requests += 3
    stats.record(Response(200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"14")]), 2.0)
    stats.record(Response(200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"0")]), 2.0)
    stats.record(Response(503, []), 2.0)
    lines = _series(m.render().decode(), "response_total")
    by_grpc = {("grpc_status=\"14\"" in line, "grpc_status=\"0\"" in line): line for line in lines}
    assert 'classification="failure",grpc_status="14",status_code="200"' in by_grpc[(True, False)]
    assert 'classification="success",grpc_status="0",status_code="200"' in by_grpc[(False, True)]
    assert "grpc_status" not in by_grpc[(False, False)]  # not gRPC: no label, as linkerd2-proxy
    for line in lines:
        assert ('dst_deployment="api",dst_namespace="shop",dst_pod="api-0",dst_service="api-svc"' in line
                and 'server_id="api.shop.serviceaccount.identity.meshctl.cluster.local"' in line)
    tcp = m.tcp("outbound", "dst", "api-svc.shop.svc.cluster.local:80", "10.0.0.1:80", "true", "x", dst)
    tcp.opened += 1
    (conn,) = _series(m.render().decode(), "tcp_open_connections")
    assert 'dst_deployment="api"' in conn and conn.endswith(" 1")


def test_pod_owner_is_linkerds_owner_label():
    def pod(kind, name, template_hash=None):
        labels = {"pod-template-hash": template_hash} if template_hash else {}
        return {"metadata": {"labels": labels, "ownerReferences": [
            {"kind": kind, "name": name, "controller": True}]}}

    assert pod_owner(pod("ReplicaSet", "web-5d4f8c9b7", "5d4f8c9b7")) == ("deployment", "web")
    assert pod_owner(pod("ReplicaSet", "bare-rs")) == ("replicaset", "bare-rs")
    assert pod_owner(pod("StatefulSet", "db")) == ("statefulset", "db")
    assert pod_owner({"metadata": {}}) is None
