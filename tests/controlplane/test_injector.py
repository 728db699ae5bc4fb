"""The proxy-injector webhook: real AdmissionReview v1 requests over HTTPS,
verified with the caBundle `install` renders, for the service name the API
server calls; and the fake API server's admission chain calling it on pod
creation as kube-apiserver does."""

from __future__ import annotations

import base64
import json
import ssl
import uuid

import httpx
import pytest
import yaml
from fakekube.patches import json_patch

from meshctl import inject
from meshctl import install as core
from meshctl.injector.server import InjectorServer
from meshctl.meshconfig import MeshConfig
from meshctl_proxy import config as proxy_config
NS = "meshctl"


@pytest.fixture(scope="module")
def rendered():
    values = core.install_values(ha=False, files=[], sets=[])
    certificates = core.make_certificates(values, namespace=NS)
    return certificates, core.render_control_plane(values, namespace=NS, certificates=certificates)


@pytest.fixture
def injector(rendered, tmp_path, cluster, kube):
    certificates, objs = rendered
    (tmp_path / "tls.crt").write_text(certificates.webhook_crt_pem)
    (tmp_path / "tls.key").write_text(certificates.webhook_key_pem)
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    mesh = MeshConfig.from_data(cm["data"], mesh_namespace=NS)
    server = InjectorServer(host="127.0.0.1", port=0, cert_file=str(tmp_path / "tls.crt"),
                            key_file=str(tmp_path / "tls.key"),
                            namespace_getter=lambda name: cluster.get("v1", "namespaces", name), mesh=lambda: mesh)
    server.start()
    yield server, certificates, mesh
    server.stop()


def client_for(certificates) -> httpx.Client:
    # What kube-apiserver does: trust only the caBundle, check the certificate for the Service's DNS name.
    ctx = ssl.create_default_context(cadata=certificates.webhook_ca_pem)
    return httpx.Client(verify=ctx, timeout=10)


def admission_review(pod: dict, *, namespace: str = "shop", operation: str = "CREATE", kind: str = "Pod") -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "requestKind": {"group": "", "version": "v1", "kind": kind},
                        "namespace": namespace, "operation": operation, "userInfo": {"username": "system:admin"},
                        "object": pod, "oldObject": None, "dryRun": False,
                        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}


def post(injector, body) -> dict:
    server, certificates, _ = injector
    host, port = server.address
    with client_for(certificates) as client:
        resp = client.post(f"https://{host}:{port}/", json=body,
                           extensions={"sni_hostname": core.webhook_dns_name(NS)})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == body["request"]["uid"]
    assert out["response"]["allowed"] is True
    return out["response"]


def web_pod(annotations=None, **spec_extra) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-7d4b9c-", "namespace": "shop", "annotations": annotations or {},
                         "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c",
                                              "uid": "1", "controller": True}]},
            "spec": {"serviceAccountName": "web",
                     "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}],
                     **spec_extra}}


def namespace(kube, name="shop", annotations=None):
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations or {}}})


def patched(pod, response) -> dict:
    assert response["patchType"] == "JSONPatch"
    return json_patch(pod, json.loads(base64.b64decode(response["patch"])))


def proxy_env(pod) -> dict:
    proxy = next(c for c in pod["spec"]["initContainers"] if c["name"] == "meshctl-proxy")
    return {e["name"]: e.get("value") for e in proxy["env"]}


def test_pod_annotation_meshes_with_the_same_core_as_the_cli(injector, kube):
    import kubernetes_validate

    namespace(kube)
    pod = web_pod({"meshctl.io/inject": "enabled"})
    response = post(injector, admission_review(pod))
    meshed = patched(pod, response)
    _, _, mesh = injector
    # Exactly what `meshctl inject --manual` makes of the same pod.
    cli = inject.inject_pod(pod, inject.InjectOptions.from_annotations({}, mesh=mesh),
                            inject.Workload("deployment", "web", "shop"), keep_opt_in=True).patch.apply(pod)
    assert meshed == cli
    assert meshed["metadata"]["annotations"]["meshctl.io/inject"] == "enabled"  # the user's request stays
    env = proxy_env(meshed)
    assert env["MESHCTL_PROXY_WORKLOAD_KIND"] == "deployment" and env["MESHCTL_PROXY_WORKLOAD_NAME"] == "web"
    assert env[proxy_config.SETTINGS_BY_FIELD["identity_trust_anchors"].env] == mesh.trust_anchors_pem
    named = {**meshed, "metadata": {**meshed["metadata"], "name": "web-7d4b9c-abcde"}}
    kubernetes_validate.validate(named, "1.31.0", strict=True)


def test_namespace_annotations_inherited_pod_wins(injector, kube):
    namespace(kube, annotations={"meshctl.io/inject": "enabled", "config.meshctl.io/proxy-log-level": "debug",
                                 "config.meshctl.io/proxy-cpu-request": "150m"})
    pod = web_pod({"config.meshctl.io/proxy-log-level": "warn"})
    meshed = patched(pod, post(injector, admission_review(pod)))
    env = proxy_env(meshed)
    assert env["MESHCTL_PROXY_LOG_LEVEL"] == "warn"
    proxy = next(c for c in meshed["spec"]["initContainers"] if c["name"] == "meshctl-proxy")
    assert proxy["resources"]["requests"]["cpu"] == "150m"


def test_user_and_linkerd_config_annotations_are_applied_and_kept(injector, kube):
    # The user's config.meshctl.io/* annotations, and Linkerd's aliases (docs/linkerd-differences.md),
    # apply as `inject --manual` applies them; meshctl's own wins over Linkerd's; all stay on the pod.
    namespace(kube, annotations={"meshctl.io/inject": "enabled"})
    annotations = {"config.meshctl.io/proxy-cpu-request": "250m", "config.linkerd.io/proxy-memory-limit": "96Mi",
                   "config.linkerd.io/proxy-cpu-request": "1", "config.linkerd.io/admin-port": "9991"}
    pod = web_pod(annotations)
    response = post(injector, admission_review(pod))
    meshed = patched(pod, response)
    proxy = next(c for c in meshed["spec"]["initContainers"] if c["name"] == "meshctl-proxy")
    assert proxy["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "96Mi"}}
    assert proxy_env(meshed)["MESHCTL_PROXY_ADMIN_LISTEN_ADDR"] == "0.0.0.0:9991"
    assert {k: meshed["metadata"]["annotations"][k] for k in annotations} == annotations


@pytest.mark.parametrize("ns_annotations, pod_annotations", [
    ({"meshctl.io/inject": "enabled"}, {"meshctl.io/inject": "disabled"}),
    ({"meshctl.io/inject": "enabled"}, {"linkerd.io/inject": "disabled"}),  # Linkerd's opt-out is honoured
    ({}, {}),
    ({"meshctl.io/inject": "disabled"}, {}),
])
def test_not_wanted_pods_are_admitted_unchanged(injector, kube, ns_annotations, pod_annotations):
    namespace(kube, annotations=ns_annotations)
    response = post(injector, admission_review(web_pod(pod_annotations)))
    assert "patch" not in response and "patchType" not in response


def test_refused_pod_is_admitted_with_a_warning(injector, kube):
    namespace(kube)
    response = post(injector, admission_review(web_pod({"meshctl.io/inject": "enabled"}, hostNetwork=True)))
    assert "patch" not in response
    assert "hostNetwork" in response["warnings"][0]


def test_own_errors_never_fail_the_pod(injector, kube):
    namespace(kube)
    response = post(injector, admission_review(web_pod({"meshctl.io/inject": "enabled",
                                                        "config.meshctl.io/proxy-cpu-request": "lots"})))
    assert "patch" not in response
    assert "pod not meshed" in response["warnings"][0] and "proxy-cpu-request" in response["warnings"][0]


def test_unreadable_namespace_judges_the_pod_alone(injector, kube):
    # The namespace does not exist: the pod's own annotation still decides.
    response = post(injector, admission_review(web_pod({"meshctl.io/inject": "enabled"}), namespace="gone"))
    assert response["patchType"] == "JSONPatch"


def test_other_kinds_and_operations_pass(injector, kube):
    namespace(kube)
    pod = web_pod({"meshctl.io/inject": "enabled"})
    assert "patch" not in post(injector, admission_review(pod, operation="UPDATE"))
    assert "patch" not in post(injector, admission_review(pod, kind="Service"))


def test_bad_requests_and_probes(injector):
    server, certificates, _ = injector
    host, port = server.address
    with client_for(certificates) as client:
        ext = {"sni_hostname": core.webhook_dns_name(NS)}
        assert client.post(f"https://{host}:{port}/", content=b"{nope", extensions=ext).status_code == 400
        assert client.post(f"https://{host}:{port}/", json={"kind": "Pod"}, extensions=ext).status_code == 400
        assert client.get(f"https://{host}:{port}/ready", extensions=ext).status_code == 200
    # A client that does not trust the caBundle (or asks for another name) is refused by TLS.
    other = core.make_certificates(core.install_values(ha=False, files=[], sets=[]), namespace="elsewhere")
    with client_for(other) as client, pytest.raises(httpx.ConnectError):
        client.get(f"https://{host}:{port}/ready", extensions={"sni_hostname": core.webhook_dns_name(NS)})
    with client_for(certificates) as client, pytest.raises(httpx.ConnectError):
        client.get(f"https://{host}:{port}/ready", extensions={"sni_hostname": "meshctl-proxy-injector.other.svc"})


def test_api_server_admission_chain(injector, kube, cluster, rendered):
    """The fake API server calls the webhook as kube-apiserver would, from the rendered configuration."""
    server, certificates, _ = injector
    _, objs = rendered
    mwc = next(o for o in objs if o["kind"] == "MutatingWebhookConfiguration")
    kube.put(yaml.safe_load(core.to_yaml([mwc])))
    kube.service_endpoints[(NS, "meshctl-proxy-injector", 443)] = server.address
    namespace(kube, annotations={"meshctl.io/inject": "enabled"})
    namespace(kube, name=NS, annotations={"meshctl.io/inject": "enabled"})
    created = cluster.create("v1", "pods", web_pod(), namespace="shop")
    assert [c["name"] for c in created["spec"]["initContainers"]][:2] == ["meshctl-init", "meshctl-proxy"]
    # The mesh namespace and kube-system are never sent to the webhook (namespaceSelector).
    before = server.reviewed
    for ns in (NS, "kube-system"):
        pod = web_pod({"meshctl.io/inject": "enabled"})
        pod["metadata"]["namespace"] = ns
        plain = cluster.create("v1", "pods", pod, namespace=ns)
        assert "initContainers" not in plain["spec"]
    assert server.reviewed == before
    # failurePolicy Ignore: with the webhook down, pods are still created, unmeshed.
    server.stop()
    plain = cluster.create("v1", "pods", web_pod(), namespace="shop")
    assert "initContainers" not in plain["spec"]
