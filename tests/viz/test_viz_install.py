"""``meshctl viz install | uninstall | check``: objects valid for Kubernetes 1.31 (strict), a config
Prometheus accepts, applied to the fake API server, checked, queried through its service proxy."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from conftest import run_cli
from controlplane.conftest import cluster, kube, kubeconfig, kubectl_apply, kubectl_delete  # noqa: F401
from fakekube.controllers import run_deployments
from viz.conftest import TapServerProcess

from meshctl import install as mesh_install
from meshctl.viz import install as core
from meshctl_proxy import config as proxy_config

K8S_VERSION = "1.31.0"
NS = "meshctl-viz"


@pytest.fixture(scope="module")
def rendered():
    return core.render(core.build_values(sets=["grafanaUrl=https://grafana.example.com"]), namespace=NS,
                       mesh_namespace="meshctl")


def by_kind(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def test_every_object_validates_against_kubernetes_1_31_strict(rendered):
    import kubernetes_validate

    assert len(rendered) == 23
    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["labels"]["meshctl.io/extension"] == "viz", obj["metadata"]["name"]


def test_prometheus_relabels_pods_to_linkerds_labels(rendered, shop, tmp_path):
    """The rendered scrape job, run by a real Prometheus.  Debian builds Prometheus without
    Kubernetes discovery, so the pods are given as static targets carrying the labels pod
    discovery would attach (``__meta_kubernetes_*``): the relabelling itself is what runs."""
    from meshctl.viz import localprom

    config = yaml.safe_load(by_kind(rendered, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    job = config["scrape_configs"][1]
    assert job["job_name"] == "linkerd-proxy" and job["kubernetes_sd_configs"] == [{"role": "pod"}]
    del job["kubernetes_sd_configs"]

    def pod(workload, *, port_name="meshctl-admin"):
        w = shop.run.plan.workload(workload)
        template_hash = "5d4f8c9b7"
        return {"targets": [w.admin], "labels": {
            "__meta_kubernetes_namespace": "shop", "__meta_kubernetes_pod_name": f"{workload}-{template_hash}-x2x9q",
            "__meta_kubernetes_pod_container_name": "meshctl-proxy",
            "__meta_kubernetes_pod_container_port_name": port_name,
            "__meta_kubernetes_pod_label_meshctl_io_control_plane_ns": "meshctl",
            "__meta_kubernetes_pod_label_app": workload, "__meta_kubernetes_pod_label_pod_template_hash": template_hash,
            "__meta_kubernetes_pod_controller_kind": "ReplicaSet",
            "__meta_kubernetes_pod_controller_name": f"{workload}-{template_hash}"}}

    job["static_configs"] = [pod("price-api"), pod("product-api", port_name="meshctl-proxy")]
    job["honor_labels"] = False  # the proxy's own pod labels would win otherwise: test the relabelling
    config["scrape_configs"] = [job]
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with localprom.start(tmp_path) as prom:
        prom.wait_scraped(1)
        import httpx

        (up,) = httpx.get(f"{prom.url}/api/v1/query", params={"query": "up"}).json()["data"]["result"]
    labels = up["metric"]
    # Only the proxy's admin port is kept; it carries Linkerd's labels, the owner found from the ReplicaSet.
    assert labels["deployment"] == "price-api" and labels["namespace"] == "shop"
    assert labels["pod"] == "price-api-5d4f8c9b7-x2x9q" and labels["app"] == "price-api"
    assert labels["job"] == "linkerd-proxy" and labels["container"] == "meshctl-proxy"


def test_tap_identity_web_and_least_privilege(rendered):
    tap = by_kind(rendered, "ServiceAccount", "tap")
    # The proxies admit this identity on their control listener (tap).
    assert proxy_config.TAP_SVC_NAME == f"{tap['metadata']['name']}.{tap['metadata']['namespace']}" \
                                        ".serviceaccount.identity.meshctl.cluster.local"
    web = by_kind(rendered, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0]
    assert web["command"][:3] == ["meshctl", "--mesh-namespace=meshctl", "dashboard"]
    assert "--grafana-url=https://grafana.example.com" in web["command"]
    assert f"--prometheus-url=http://prometheus.{NS}.svc.cluster.local:9090" in web["command"]
    prometheus_role = by_kind(rendered, "ClusterRole", f"meshctl-{NS}-prometheus")
    assert prometheus_role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    for role in (o for o in rendered if o["kind"] == "ClusterRole"):
        assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in role["rules"])
    ns = by_kind(rendered, "Namespace", NS)
    assert ns["metadata"]["annotations"]["meshctl.io/inject"] == "enabled"


def test_tap_server_apiservice_certificate_and_rbac(rendered):
    """The APIService's caBundle vouches for the tap Secret's certificate under the name the API
    server checks (tap.NS.svc); the Deployment runs `meshctl viz tap-server` with that certificate
    and the tap ServiceAccount; callers need `watch` in tap.meshctl.io, which `admin` aggregates."""
    import base64
    import datetime as dt

    from meshctl.identity import certs

    api = by_kind(rendered, "APIService", "v1alpha1.tap.meshctl.io")["spec"]
    assert api["service"] == {"name": "tap", "namespace": NS, "port": 443}
    assert (api["group"], api["version"]) == ("tap.meshctl.io", "v1alpha1")
    secret = by_kind(rendered, "Secret", "tap-k8s-tls")
    ca = certs.load_certificates(base64.b64decode(api["caBundle"]), source="caBundle")
    leaf = certs.load_certificates(base64.b64decode(secret["data"]["tls.crt"]), source="tls.crt")
    certs.verify_chain(leaf, ca, source="tap-k8s-tls")
    assert certs.describe(leaf[0]).dns_names == (f"tap.{NS}.svc",)
    assert leaf[0].not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=364)
    pod = by_kind(rendered, "Deployment", "tap")["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"meshctl.io/inject": "disabled"}
    assert pod["spec"]["serviceAccountName"] == "tap"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["meshctl", "--mesh-namespace=meshctl", "viz", "tap-server",
                                    "--tls-cert-file=/var/run/meshctl/tls/tls.crt",
                                    "--tls-key-file=/var/run/meshctl/tls/tls.key", f"--namespace={NS}",
                                    "--cluster-domain=cluster.local"]
    token = next(v for v in pod["spec"]["volumes"] if v["name"] == "identity-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == proxy_config.IDENTITY_AUDIENCE
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {
        "/var/run/meshctl/tls", proxy_config.IDENTITY_DIR, proxy_config.IDENTITY_TOKEN_FILE.rsplit("/", 1)[0]}
    admin = by_kind(rendered, "ClusterRole", f"meshctl-{NS}-tap-admin")
    assert admin["rules"] == [{"apiGroups": ["tap.meshctl.io"], "resources": ["*"], "verbs": ["watch"]}]
    assert admin["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    delegator = by_kind(rendered, "ClusterRoleBinding", f"meshctl-{NS}-tap-auth-delegator")
    assert delegator["roleRef"]["name"] == "system:auth-delegator"
    web = by_kind(rendered, "ClusterRoleBinding", f"meshctl-{NS}-web-admin")  # the dashboard's live calls
    assert (web["roleRef"]["name"], web["subjects"]) == (f"meshctl-{NS}-tap-admin", [
        {"kind": "ServiceAccount", "name": "web", "namespace": NS}])
    reader = by_kind(rendered, "RoleBinding", f"meshctl-{NS}-tap-auth-reader")
    assert (reader["metadata"]["namespace"], reader["roleRef"]["name"]) == (
        "kube-system", "extension-apiserver-authentication-reader")


def test_bad_values_are_one_line_errors():
    r = run_cli("viz", "install", "--ignore-cluster", "--set", "grafana=x")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == ["Error: --set grafana=x: unknown value 'grafana' (see manifests/values.yaml)"]


def _mesh_config(kube) -> None:
    from meshctl.identity import certs
    from meshctl.meshconfig import CONFIG_MAP_NAME, MeshConfig

    anchors = certs.generate_trust_anchor().cert_pem
    data = MeshConfig(mesh_namespace="meshctl", trust_anchors_pem=anchors).to_data()
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshctl"}})
    kube.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP_NAME, "namespace": "meshctl"},
              "data": data})


def _cli(kubeconfig, *args):
    return run_cli("--kubeconfig", kubeconfig, *args, timeout=90)


def test_install_check_query_uninstall(kube, cluster, kubeconfig, shop, tmp_path):  # noqa: F811
    r = _cli(kubeconfig, "viz", "install")
    assert r.returncode == 1 and "is meshctl installed?" in r.stderr and "--ignore-cluster" in r.stderr
    _mesh_config(kube)
    r = _cli(kubeconfig, "viz", "install")
    assert r.returncode == 0, r.stderr
    objs = [d for d in yaml.safe_load_all(r.stdout) if d]
    kubectl_apply(kube, cluster, objs)
    # Not running yet: check fails at the pods, after --wait.
    r = _cli(kubeconfig, "viz", "check", "--wait", "2s", "-o", "json")
    doc = json.loads(r.stdout)
    results = {c["description"]: c for cat in doc["categories"] for c in cat["checks"]}
    assert r.returncode == 1 and results["viz extension pods are running"]["result"] == "error"
    assert results[f"{NS} Namespace exists"]["result"] == "success"
    # The pods run, and the cluster's network serves the prometheus Service with a real Prometheus
    # (the shop's, scraping real proxies).
    run_deployments(kube, namespace=NS)
    host, port = shop.prometheus_url.removeprefix("http://").split(":")
    kube.service_endpoints[(NS, "prometheus", 9090)] = (host, int(port))
    # Nothing behind the tap Service: the tap API check says what the API server said.
    r = _cli(kubeconfig, "viz", "check", "--wait", "1s", "-o", "json")
    results = {c["description"]: c for cat in json.loads(r.stdout)["categories"] for c in cat["checks"]}
    assert r.returncode == 1 and results["tap API service is running"]["result"] == "error"
    assert results["tap API service is running"]["error"] == (
        f'/apis/tap.meshctl.io/v1alpha1: HTTP 503: service "{NS}/tap" is not available')
    # The tap server as its Deployment runs it (no identity service here: it answers discovery, the
    # API server's question, but cannot tap: its readiness says so).
    tap_server = TapServerProcess(kube, objs, tmp_path, identity_addr="127.0.0.1:9", token="t")
    tap_server.start(ready=False)
    try:
        r = _cli(kubeconfig, "viz", "check", "--wait", "20s", "-o", "json")
    finally:
        tap_server.stop()
    doc = json.loads(r.stdout)
    failing = [c for cat in doc["categories"] for c in cat["checks"] if c["result"] != "success"]
    assert r.returncode == 0 and failing == [], failing
    assert [cat["categoryName"] for cat in doc["categories"]] == ["kubernetes-api", "meshctl-viz"]
    # `viz stat` reaches that Prometheus through the API server's service proxy, as linkerd viz does.
    r = _cli(kubeconfig, "viz", "stat", "deploy", "-n", "shop", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert {row["name"] for row in json.loads(r.stdout)} == {"product-gateway-api", "product-api", "price-api"}
    assert any("/services/http:prometheus:9090/proxy/api/v1/query" in path for _, path in kube.requests)
    # No endpoints behind the Service: one line naming the URL and what the API server said.
    del kube.service_endpoints[(NS, "prometheus", 9090)]
    r = _cli(kubeconfig, "viz", "stat", "deploy", "-n", "shop")
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()
    assert line.startswith("Error: prometheus at https://127.0.0.1:") and line.endswith(
        f'/api/v1/namespaces/{NS}/services/http:prometheus:9090/proxy: HTTP 503: '
        'no endpoints available for service "prometheus"'), line
    # Uninstall: what `kubectl delete -f -` needs, and nothing is left.
    r = _cli(kubeconfig, "viz", "uninstall")
    assert r.returncode == 0, r.stderr
    gone = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert [o["kind"] for o in gone][:2] == ["APIService", "RoleBinding"]  # the API server stops relaying first
    assert sorted(o["kind"] for o in gone) == (["APIService"] + ["ClusterRole"] * 4 + ["ClusterRoleBinding"] * 5
                                               + ["Namespace", "RoleBinding"])
    assert kubectl_delete(kube, cluster, gone) == []
    r = _cli(kubeconfig, "viz", "check", "--wait", "1s")
    assert r.returncode == 1 and f"× {NS} Namespace exists" in r.stdout
    r = _cli(kubeconfig, "viz", "uninstall")
    assert r.returncode == 1 and "not installed" in r.stderr


def test_meshctl_check_runs_the_viz_checks_when_viz_is_installed(kube, cluster, kubeconfig, shop,  # noqa: F811
                                                                  tmp_path):
    kube.put_all(mesh_install.render_crds())
    values = mesh_install.install_values(ha=False, files=[], sets=[])
    kube.put_all(mesh_install.render_control_plane(values, namespace="meshctl",
                                                   certificates=mesh_install.make_certificates(values,
                                                                                               namespace="meshctl")))
    run_deployments(kube, namespace="meshctl")
    r = _cli(kubeconfig, "check", "-o", "json", "--wait", "5s")
    assert "meshctl-viz" not in [cat["categoryName"] for cat in json.loads(r.stdout)["categories"]]
    objs = core.render(core.build_values(), namespace=NS, mesh_namespace="meshctl")
    kube.put_all(objs)
    run_deployments(kube, namespace=NS)
    host, port = shop.prometheus_url.removeprefix("http://").split(":")
    kube.service_endpoints[(NS, "prometheus", 9090)] = (host, int(port))
    tap_server = TapServerProcess(kube, objs, tmp_path, identity_addr="127.0.0.1:9", token="t")
    tap_server.start(ready=False)
    try:
        r = _cli(kubeconfig, "check", "-o", "json", "--wait", "20s")
    finally:
        tap_server.stop()
    doc = json.loads(r.stdout)
    assert [cat["categoryName"] for cat in doc["categories"]][-1] == "meshctl-viz"
    viz = doc["categories"][-1]["checks"]
    assert [c["result"] for c in viz] == ["success"] * len(viz), viz
