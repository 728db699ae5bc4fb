"""The tap server's pure parts: the request path and body, who is asking, which pods a resource names."""

from __future__ import annotations

import pytest

from meshctl.viz import tapserver as ts
from meshctl.viz.resources import Resource
from meshctl.viz.tap import api_path

PREFIX = "/apis/tap.meshctl.io/v1alpha1/watch/namespaces"


@pytest.mark.parametrize("resource, ns, kind, name", [
    (Resource("deployment", "web"), "shop", "deployment", "web"),
    (Resource("deployment"), "shop", "deployment", None),
    (Resource("pod", "web-0"), "shop", "pod", "web-0"),
    (Resource("namespace", "shop"), "ignored", "namespace", "shop"),
    (Resource("service", "web-svc"), "shop", "service", "web-svc"),
])
def test_the_cli_path_is_what_the_server_parses(resource, ns, kind, name):
    req = ts.parse_request(api_path(resource, ns), b'{"max_rps": 10, "to": "deploy/db"}')
    assert (req.kind, req.name) == (kind, name)
    assert req.filter == {"max_rps": 10} and req.to == Resource("deployment", "db")
    attrs = req.review_attributes()
    assert (attrs["verb"], attrs["group"], attrs["subresource"]) == ("watch", "tap.meshctl.io", "tap")
    assert attrs.get("name") == name


@pytest.mark.parametrize("path, body, code, message", [
    (f"{PREFIX}/shop/deployments/web", b"{}", 404, "could not find"),
    (f"{PREFIX}/shop/configmaps/x/tap", b"{}", 404, "cannot tap configmaps"),
    (f"{PREFIX}/shop/deployments/web/tap", b"[1]", 400, "must be a JSON object"),
    (f"{PREFIX}/shop/deployments/web/tap", b"{", 400, "not JSON"),
    (f"{PREFIX}/shop/deployments/web/tap", b'{"maxrps": 1}', 400, "unknown field 'maxrps'"),
    (f"{PREFIX}/shop/deployments/web/tap", b'{"to": "cm/x"}', 400, "unknown resource type 'cm'"),
])
def test_bad_requests_name_the_problem(path, body, code, message):
    with pytest.raises(ts.HttpError) as info:
        ts.parse_request(path, body)
    assert info.value.code == code and message in info.value.message


AUTH = ts.RequestHeaderAuth.from_config_map({
    "requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\n", "requestheader-allowed-names": '["front-proxy-client"]',
    "requestheader-username-headers": '["X-Remote-User"]', "requestheader-group-headers": '["X-Remote-Group"]'})
FRONT = {"subject": ((("commonName", "front-proxy-client"),),)}


def test_the_caller_is_who_the_api_server_names():
    headers = [("X-Remote-User", "alice"), ("x-remote-group", "dev"), ("X-Remote-Group", "system:authenticated")]
    assert AUTH.caller(FRONT, headers) == ("alice", ("dev", "system:authenticated"))


@pytest.mark.parametrize("peercert, headers, message", [
    (None, [("X-Remote-User", "system:admin")], "front-proxy client certificate"),
    ({"subject": ((("commonName", "someone"),),)}, [("X-Remote-User", "a")], "not an allowed request-header client"),
    (FRONT, [], "no user named"),
])
def test_anyone_else_is_401(peercert, headers, message):
    with pytest.raises(ts.HttpError) as info:
        AUTH.caller(peercert, headers)
    assert info.value.code == 401 and message in info.value.message


def test_an_api_server_without_aggregation_is_named():
    with pytest.raises(ts.MeshctlError, match="requestheader-client-ca-file"):
        ts.RequestHeaderAuth.from_config_map({})


def pod(name, *, owner=None, labels=None, phase="Running", ip="10.0.0.1", mesh="meshctl", sa="web"):
    meta = {"name": name, "namespace": "shop", "labels": {**(labels or {}), "meshctl.io/control-plane-ns": mesh}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"metadata": meta, "spec": {"serviceAccountName": sa, "containers": [
        {"name": "app", "ports": [{"containerPort": 8080}]},
        {"name": "meshctl-proxy", "env": [{"name": "MESHCTL_PROXY_CONTROL_LISTEN_ADDR", "value": "0.0.0.0:4999"}]}]},
        "status": {"phase": phase, "podIP": ip}}


def test_pods_of_a_resource_their_owners_ports_and_identities():
    web = pod("web-5d4f-abcde", owner=("ReplicaSet", "web-5d4f"), labels={"pod-template-hash": "5d4f", "app": "web"})
    db = pod("db-0", owner=("StatefulSet", "db"), ip="10.0.0.2", sa="db")
    pending = pod("web-5d4f-zzzzz", owner=("ReplicaSet", "web-5d4f"), labels={"pod-template-hash": "5d4f"},
                  phase="Pending", ip="")
    other_mesh = pod("web-5d4f-other", owner=("ReplicaSet", "web-5d4f"), labels={"pod-template-hash": "5d4f"},
                     mesh="linkerd", ip="10.0.0.3")
    index = ts.PodIndex([web, db, pending, other_mesh], mesh_namespace="meshctl", trust_domain="cluster.local")
    assert index.select("shop", "deployment", "web") == [web]
    assert index.select("shop", "statefulset", None) == [db]
    assert index.select("shop", "service", "web-svc", {"app": "web"}) == [web]
    assert index.select("shop", "namespace", "shop") == [web, db]
    (target,) = index.targets([web])
    assert target.control == ("10.0.0.1", 4999) and target.name == "deploy/web"
    assert target.identity == "web.shop.serviceaccount.identity.meshctl.cluster.local"
    assert ts.container_addrs(db) == ["10.0.0.2:8080"]
    assert index.resource_of("10.0.0.2:8080") == {"namespace": "shop", "pod": "db-0", "sts": "db"}
    assert index.resource_of("127.0.0.1:5", "db.shop.serviceaccount.identity.meshctl.cluster.local") == {
        "namespace": "shop", "pod": "db-0", "sts": "db"}
    assert ts.owner_of(pod("bare")) == ("pod", "bare")
