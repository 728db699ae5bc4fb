"""The fake API server answers as kube-apiserver does: checked through the
real `kubernetes` client (its typed API and its watch), so a divergence that
the client would notice fails here first."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from meshctl.k8s import ApiStatusError, Cluster, WatchExpired


@pytest.fixture
def api(kubeconfig):
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as api_client:
        yield api_client


def _status(exc: ApiException) -> dict:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def cm(name, ns="default", **data):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def test_discovery_and_version(api, kube, cluster):
    assert client.VersionApi(api).get_code().git_version == "v1.31.0"
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "rbac.authorization.k8s.io", "apiextensions.k8s.io", "discovery.k8s.io"} <= groups
    assert "meshctl.io" not in groups
    core = client.CoreApi(api).get_api_versions()
    assert core.versions == ["v1"]
    pods = next(r for r in client.CoreV1Api(api).get_api_resources().resources if r.name == "pods")
    assert pods.namespaced and "watch" in pods.verbs and pods.short_names == ["po"]


def test_crud_status_codes_and_bodies(api, kube):
    v1 = client.CoreV1Api(api)
    created = v1.create_namespaced_config_map("default", cm("a", x="1"))
    assert created.metadata.uid and created.metadata.resource_version and created.metadata.creation_timestamp
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("default", cm("a"))
    assert exc.value.status == 409 and _status(exc.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("missing", "default")
    body = _status(exc.value)
    assert exc.value.status == 404 and body["message"] == 'configmaps "missing" not found'
    assert body["details"] == {"name": "missing", "kind": "configmaps"}
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("nowhere", cm("a", ns="nowhere"))
    assert exc.value.status == 404 and _status(exc.value)["message"] == 'namespaces "nowhere" not found'
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("default", cm("Bad_Name"))
    assert exc.value.status == 422 and _status(exc.value)["reason"] == "Invalid"
    with pytest.raises(ApiException) as exc:
        v1.create_namespaced_config_map("default", cm("b", ns="other"))
    assert exc.value.status == 400
    # Optimistic concurrency: an update with a stale resourceVersion conflicts.
    stale = created.to_dict()
    v1.patch_namespaced_config_map("a", "default", {"data": {"x": "2"}})
    stale_body = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "a", "namespace": "default", "resourceVersion": stale["metadata"]["resource_version"]},
                  "data": {"x": "3"}}
    with pytest.raises(ApiException) as exc:
        v1.replace_namespaced_config_map("a", "default", stale_body)
    assert exc.value.status == 409 and _status(exc.value)["reason"] == "Conflict"
    deleted = v1.delete_namespaced_config_map("a", "default")
    assert (deleted["status"] if isinstance(deleted, dict) else deleted.status) == "Success"


def test_auth_and_authorization(kube, tmp_path, cluster):
    bad = Cluster(kubeconfig=str(kube.kubeconfig(tmp_path / "bad", token="wrong")))
    with pytest.raises(ApiStatusError) as exc:
        bad.list("v1", "pods")
    assert exc.value.code == 401
    kube.deny("list", "secrets", namespace="kube-system")
    with pytest.raises(ApiStatusError) as exc:
        cluster.list("v1", "secrets", namespace="kube-system")
    assert exc.value.code == 403
    assert exc.value.status_message == ('secrets is forbidden: User "kubernetes-admin" cannot list resource "secrets" '
                                        'in API group "" in the namespace "kube-system"')
    assert cluster.can_i("list", "secrets", namespace="default")
    assert not cluster.can_i("list", "secrets", namespace="kube-system")


def test_status_subresource_and_generation(kube, cluster):
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
           "status": {"readyReplicas": 1}}
    created = cluster.create("apps/v1", "deployments", dep, namespace="default")
    assert "status" not in created and created["metadata"]["generation"] == 1
    patched = cluster.patch("apps/v1", "deployments", "web", {"status": {"readyReplicas": 5}, "spec": {"replicas": 2}},
                            namespace="default")
    assert "status" not in patched and patched["metadata"]["generation"] == 2  # status ignored on the main endpoint
    status = cluster.patch("apps/v1", "deployments", "web", {"status": {"readyReplicas": 2}}, namespace="default",
                           subresource="status")
    assert status["status"] == {"readyReplicas": 2} and status["metadata"]["generation"] == 2


def test_list_selectors_and_pagination(kube, cluster):
    for i in range(7):
        kube.put({**cm(f"c{i}"), "metadata": {"name": f"c{i}", "namespace": "default",
                                              "labels": {"tier": "a" if i % 2 else "b"}}})
    assert len(cluster.list("v1", "configmaps", label_selector="tier=a")["items"]) == 3
    assert len(cluster.list("v1", "configmaps", label_selector="tier in (a,b),tier!=b")["items"]) == 3
    assert [o["metadata"]["name"] for o in cluster.list("v1", "configmaps", field_selector="metadata.name=c4")
            ["items"]] == ["c4"]
    page = cluster._request("GET", "/api/v1/namespaces/default/configmaps", query={"limit": 3})
    assert len(page["items"]) == 3 and page["metadata"]["continue"] and page["metadata"]["remainingItemCount"] == 4
    assert len(cluster.list("v1", "configmaps", namespace="default")["items"]) == 7  # follows continue
    assert "kind" not in page["items"][0]  # items of built-in lists carry no kind, as the real server encodes them


def test_watch_semantics(kube, cluster):
    listed = cluster.list("v1", "configmaps", namespace="default")
    rv = listed["metadata"]["resourceVersion"]

    def later():
        time.sleep(0.3)
        kube.put({**cm("w"), "metadata": {"name": "w", "namespace": "default", "labels": {"watch": "yes"}}})
        kube.put({**cm("w"), "metadata": {"name": "w", "namespace": "default", "labels": {"watch": "no"}}})
        kube.remove("v1", "ConfigMap", "w", "default")

    t = threading.Thread(target=later)
    t.start()
    seen = [(typ, obj["metadata"].get("name")) for typ, obj in
            cluster.watch("v1", "configmaps", namespace="default", resource_version=rv, label_selector="watch=yes",
                          timeout_seconds=2)]
    t.join()
    events = [s for s in seen if s[0] != "BOOKMARK"]
    # Leaving the selector is a DELETED for this watch; the real delete is not seen again.
    assert events == [("ADDED", "w"), ("DELETED", "w")]
    assert ("BOOKMARK", None) in seen
    # rv unset: the current state as synthetic ADDED events first.
    kube.put(cm("x"))
    first = next(iter(cluster.watch("v1", "configmaps", namespace="default", timeout_seconds=1)))
    assert first[0] == "ADDED"
    kube.compact()
    with pytest.raises(WatchExpired) as exc:
        list(cluster.watch("v1", "configmaps", resource_version=rv, timeout_seconds=1))
    assert exc.value.code == 410 and "too old resource version" in exc.value.status_message


def test_typed_client_watch(api, kube):
    v1 = client.CoreV1Api(api)
    names = [e["object"].metadata.name for e in watch.Watch().stream(v1.list_namespace, timeout_seconds=1)]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]


def test_crd_lifecycle(kube, cluster):
    from meshctl import install as core

    crd = core.render_crds()[0]
    cluster.create("apiextensions.k8s.io/v1", "customresourcedefinitions", crd)
    stored = cluster.get("apiextensions.k8s.io/v1", "customresourcedefinitions", crd["metadata"]["name"])
    assert {c["type"]: c["status"] for c in stored["status"]["conditions"]}["Established"] == "True"
    sp = {"apiVersion": "meshctl.io/v1alpha2", "kind": "ServiceProfile",
          "metadata": {"name": "web.default.svc.cluster.local", "namespace": "default"}, "spec": {"routes": []}}
    made = cluster.create("meshctl.io/v1alpha2", "serviceprofiles", sp, namespace="default")
    assert made["kind"] == "ServiceProfile" and made["metadata"]["generation"] == 1
    assert cluster.list("meshctl.io/v1alpha2", "serviceprofiles")["items"][0]["kind"] == "ServiceProfile"
    with pytest.raises(ApiStatusError) as exc:
        cluster.patch("meshctl.io/v1alpha2", "serviceprofiles", sp["metadata"]["name"], {"spec": {}},
                      namespace="default", content_type="application/strategic-merge-patch+json")
    assert exc.value.code == 415  # custom resources take no strategic merge patch
    cluster.delete("apiextensions.k8s.io/v1", "customresourcedefinitions", crd["metadata"]["name"])
    assert cluster.api_resources("meshctl.io/v1alpha2") is None
    with pytest.raises(ApiStatusError) as exc:
        cluster.list("meshctl.io/v1alpha2", "serviceprofiles")
    assert exc.value.code == 404


def test_namespace_deletion_takes_its_contents(kube, cluster):
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}})
    kube.put(cm("inside", ns="tmp"))
    gone = cluster._request("DELETE", "/api/v1/namespaces/tmp")
    assert gone["kind"] == "Namespace" and gone["status"]["phase"] == "Terminating"
    assert cluster.get("v1", "configmaps", "inside", namespace="tmp") is None


def test_the_services_proxy_relays_a_post_and_streams_the_answer(kube, cluster):
    """POST .../services/NAME:PORT/proxy/PATH reaches the Service with its body, and the answer comes
    back line by line as the backend writes it (a stream must not wait for its end)."""
    import http.server

    release = threading.Event()

    class Backend(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in (b"got " + body + b"\n", b"later\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                release.wait(10)  # the second line only once the client has read the first
            self.wfile.write(b"0\r\n\r\n")

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        kube.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
                  "spec": {"ports": [{"port": 80}]}})
        kube.service_endpoints[("default", "echo", 80)] = backend.server_address
        lines = iter(cluster.stream_lines("POST", "/api/v1/namespaces/default/services/echo:80/proxy/x", {"a": 1}))
        assert next(lines) == b'got {"a": 1}'
        release.set()
        assert list(lines) == [b"later"]
        kube.deny("create", "services/proxy", namespace="default")
        with pytest.raises(ApiStatusError, match='403 Forbidden: services "echo" is forbidden: .* cannot create '
                                                 'resource "services/proxy"'):
            cluster.stream_lines("POST", "/api/v1/namespaces/default/services/echo:80/proxy/x", {})
    finally:
        backend.shutdown()
        backend.server_close()
