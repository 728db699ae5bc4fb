"""`meshctl install`, `upgrade` and `uninstall`: rendered objects, validated
against the Kubernetes 1.31 schemas, applied to the fake API server."""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from conftest import run_cli
from controlplane.conftest import kubectl_apply, kubectl_delete

from meshctl import install as core
from meshctl.identity import certs
from meshctl.meshconfig import MeshConfig

K8S_VERSION = "1.31.0"


def render(*, ha=False, sets=(), files=(), namespace="meshctl"):
    values = core.install_values(ha=ha, files=list(files), sets=list(sets))
    return core.render_control_plane(values, namespace=namespace,
                                     certificates=core.make_certificates(values, namespace=namespace))


def by_kind(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found if name is None else found[0]


@pytest.fixture(scope="module")
def rendered():
    return render()


@pytest.fixture(scope="module")
def rendered_ha():
    return render(ha=True)


@pytest.mark.parametrize("which", ["rendered", "rendered_ha"])
def test_every_object_validates_against_kubernetes_1_31_strict(which, request):
    import kubernetes_validate

    for obj in request.getfixturevalue(which):
        # Round-trip through YAML first: what kubectl would read from our output.
        obj = yaml.safe_load(core.to_yaml([obj]))
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_validation_is_real():
    import kubernetes_validate

    bad = yaml.safe_load(core.to_yaml([by_kind(render(), "Deployment", "meshctl-destination")]))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_crds_validate_and_profile_crd_is_shipped():
    import kubernetes_validate

    crds = core.render_crds()
    names = {c["metadata"]["name"] for c in crds}
    assert "serviceprofiles.meshctl.io" in names
    for crd in crds:
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


def test_control_plane_contents(rendered):
    kinds = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert kinds[0] == ("Namespace", "meshctl")
    for name in ("meshctl-destination", "meshctl-identity", "meshctl-proxy-injector"):
        assert ("ServiceAccount", name) in kinds
        assert ("Deployment", name) in kinds
    for svc in ("meshctl-dst", "meshctl-identity", "meshctl-proxy-injector"):
        assert ("Service", svc) in kinds
    assert not any(k == "PodDisruptionBudget" for k, _ in kinds)
    for obj in rendered:
        assert obj["metadata"]["labels"]["meshctl.io/control-plane-ns"] == "meshctl"
        if obj["kind"] == "Deployment":
            assert obj["spec"]["replicas"] == 1
            assert "affinity" not in obj["spec"]["template"]["spec"]
    # Services select their Deployment's pods.
    for svc, dep in (("meshctl-dst", "meshctl-destination"), ("meshctl-identity", "meshctl-identity"),
                     ("meshctl-proxy-injector", "meshctl-proxy-injector")):
        labels = by_kind(rendered, "Deployment", dep)["spec"]["template"]["metadata"]["labels"]
        assert by_kind(rendered, "Service", svc)["spec"]["selector"].items() <= labels.items()


def test_proxy_configuration_names_the_services_install_creates(rendered):
    # The proxies' defaults (meshctl_proxy.config) must point at what install renders.
    from meshctl_proxy import config
    dst_host, dst_port = config.parse_addr(config.SETTINGS_BY_FIELD["destination_svc_addr"].default)
    id_host, id_port = config.parse_addr(config.SETTINGS_BY_FIELD["identity_svc_addr"].default)
    for host, port in ((dst_host, dst_port), (id_host, id_port)):
        svc_name, ns = host.split(".")[:2]
        svc = by_kind(rendered, "Service", svc_name)
        assert svc["metadata"]["namespace"] == ns
        assert port in [p["port"] for p in svc["spec"]["ports"]]


def test_least_privilege_rbac(rendered):
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(rendered, "ClusterRole")}
    for rules in roles.values():
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "secrets" not in rule["resources"]
            assert not set(rule["verbs"]) & {"create", "update", "patch", "delete"} or \
                rule["resources"] == ["tokenreviews"]
    assert roles["meshctl-meshctl-identity"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    bindings = {b["metadata"]["name"]: b for b in by_kind(rendered, "ClusterRoleBinding")}
    for name, binding in bindings.items():
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"][0]["namespace"] == "meshctl"


def test_config_map_is_the_mesh_config_contract(rendered):
    cm = by_kind(rendered, "ConfigMap", "meshctl-config")
    cfg = MeshConfig.from_data(cm["data"], mesh_namespace="meshctl")
    assert cfg.trust_anchors_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert cfg.proxy_image == "ghcr.io/meshctl/meshctl"
    issuer = by_kind(rendered, "Secret", "meshctl-identity-issuer")
    assert issuer["type"] == "kubernetes.io/tls"
    crt = base64.b64decode(issuer["data"]["tls.crt"]).decode()
    key = base64.b64decode(issuer["data"]["tls.key"]).decode()
    loaded = certs.load_issuer(cert_pem=crt, key_pem=key, trust_anchors_pem=cfg.trust_anchors_pem)
    assert loaded.certificate.issuer == certs.load_certificates(cfg.trust_anchors_pem, source="x")[0].subject


def test_webhook_configuration(rendered):
    from cryptography import x509

    mwc = by_kind(rendered, "MutatingWebhookConfiguration")[0]
    hook = mwc["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["service"] == {"name": "meshctl-proxy-injector", "namespace": "meshctl",
                                               "path": "/", "port": 443}
    skipped = hook["namespaceSelector"]["matchExpressions"][0]
    assert skipped == {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                       "values": ["kube-system", "meshctl"]}
    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    secret = by_kind(rendered, "Secret", "meshctl-proxy-injector-k8s-tls")
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["meshctl-proxy-injector.meshctl.svc"]


def test_ha(rendered_ha):
    deps = by_kind(rendered_ha, "Deployment")
    assert len(deps) == 3
    for dep in deps:
        assert dep["spec"]["replicas"] == 3
        anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        term = anti["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "100m"
    pdbs = by_kind(rendered_ha, "PodDisruptionBudget")
    assert sorted(p["metadata"]["name"] for p in pdbs) == ["meshctl-destination", "meshctl-identity",
                                                           "meshctl-proxy-injector"]


def test_set_and_values_file_precedence(tmp_path):
    f1 = tmp_path / "a.yaml"
    f1.write_text("controllerReplicas: 2\nimage:\n  name: registry.local/mesh\n")
    f2 = tmp_path / "b.yaml"
    f2.write_text("controllerReplicas: 4\n")
    objs = render(ha=True, files=[f1, f2], sets=["image.version=9.9.9", "proxyInjector.failurePolicy=Fail"])
    dep = by_kind(objs, "Deployment", "meshctl-identity")
    assert dep["spec"]["replicas"] == 4  # the later file wins over --ha and the earlier file
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/mesh:9.9.9"
    assert by_kind(objs, "MutatingWebhookConfiguration")[0]["webhooks"][0]["failurePolicy"] == "Fail"
    assert by_kind(objs, "ConfigMap", "meshctl-config")["data"]["proxyVersion"] == "9.9.9"


@pytest.mark.parametrize("args, message, code", [
    # A --set the values cannot take is a usage error (2); certificates that do not fit together fail at run time (1).
    (["--set", "nosuch.key=1"], "--set nosuch.key=1: unknown value 'nosuch'", 2),
    (["--set", "controllerReplicas=three"], "controllerReplicas must be an integer", 2),
    (["--set", "ha"], "expected KEY=VALUE", 2),
    (["--set", "identity.issuer.lifetime=forever"], "identity.issuer.lifetime: expected a duration", 2),
    (["--set", "identity.issuerCrtPEM=x"], "go together", 1),
    (["--set", "proxyInjector.crtPEM=x", "--set", "proxyInjector.keyPEM=y", "--set", "proxyInjector.caBundlePEM=z"],
     "proxyInjector.crtPEM: not signed by proxyInjector.caBundlePEM", 1),
    # Values with a known domain are checked before rendering, with linkerd's words where it has them.
    (["-L", "Bad_NS"], "-L/--mesh-namespace: namespace 'Bad_NS' is not a DNS-1123 label", 2),
    (["--image-pull-policy", "sometimes"], "--image-pull-policy: must be one of: Always, IfNotPresent, Never", 2),
    (["--set", "image.pullPolicy=sometimes"], "image.pullPolicy: must be one of: Always, IfNotPresent, Never", 2),
    (["--set", "proxy.resources.requests.cpu=2", "--set", "proxy.resources.limits.cpu=1"],
     "The cpu limit '1' cannot be lower than the cpu request '2'", 2),
    (["--ha", "--set", "controllerResources.limits.memory=10Mi"],
     "The memory limit '10Mi' cannot be lower than the memory request '50Mi'", 2),
    (["--set", "controllerResources.requests.cpu=lots"], "controllerResources.requests.cpu: expected a Kubernetes quantity", 2),
    (["--set", "proxy.logLevel=loud"], "proxy.logLevel:", 2),
    (["--set", "clusterDomain=Bad_Domain"], "clusterDomain: 'Bad_Domain' is not a DNS subdomain", 2),
    (["--set", "clusterNetworks=10.0.0.0/33"], "clusterNetworks:", 2),
    (["--set", "controllerReplicas=0"], "controllerReplicas: must be at least 1", 2),
    (["--set", "proxyInjector.failurePolicy=Sometimes"], "proxyInjector.failurePolicy: must be Ignore or Fail", 2),
    (["--set", "proxyInjector.timeoutSeconds=60"], "proxyInjector.timeoutSeconds: must be between 1 and 30", 2),
    (["--identity-trust-anchors-file", "/nonexistent/ca.crt"], "--identity-trust-anchors-file /nonexistent/ca.crt", 1),
])
def test_bad_values_are_one_line_errors(args, message, code):
    proc = run_cli("install", "--ignore-cluster", *args)
    assert proc.returncode == code
    assert proc.stdout == ""
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_a_bad_value_in_a_values_file_names_the_value_and_exits_1(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("image:\n  pullPolicy: Sometimes\n")
    proc = run_cli("install", "--ignore-cluster", "-f", str(f))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "Error: image.pullPolicy: must be one of: Always, IfNotPresent, Never, got 'Sometimes'\n"


def test_identity_files_from_identity_create(tmp_path):
    # What `meshctl identity create` prints is a command that works: the issuer installed is the one given.
    made = run_cli("identity", "create", "--out-dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    hint = made.stderr.strip().splitlines()[-1]
    assert hint.startswith("install with: meshctl install --identity-trust-anchors-file ")
    args = hint.removeprefix("install with: meshctl install ").split()
    proc = run_cli("install", "--ignore-cluster", *args)
    assert proc.returncode == 0, proc.stderr
    secret = by_kind(list(yaml.safe_load_all(proc.stdout)), "Secret", core.ISSUER_SECRET)
    assert base64.b64decode(secret["data"]["tls.crt"]).decode() == (tmp_path / "issuer.crt").read_text()
    # A key that is not the certificate's: the error names both files.
    wrong = [a if not a.endswith("issuer.key") else str(tmp_path / "ca.key") for a in args]
    proc = run_cli("install", "--ignore-cluster", *wrong)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"{tmp_path / 'ca.key'}: does not match the public key of {tmp_path / 'issuer.crt'}" in proc.stderr
    # Two of the three: they go together.
    proc = run_cli("install", "--ignore-cluster", *args[:4])
    assert proc.returncode == 1 and "go together" in proc.stderr


def test_bad_values_file_names_file_and_line(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("image:\n  name: [unclosed\n")
    proc = run_cli("install", "--ignore-cluster", "-f", str(f))
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"{f}, line" in proc.stderr
    f.write_text("image:\n  tag: v1\n")
    proc = run_cli("install", "--ignore-cluster", "-f", str(f))
    assert f"{f}: unknown value 'image.tag'" in proc.stderr


def test_given_issuer_is_validated_and_used(tmp_path):
    anchor = certs.generate_trust_anchor()
    issuer = certs.generate_issuer(anchor)
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"identity": {"trustAnchorsPEM": anchor.cert_pem, "issuerCrtPEM": issuer.cert_pem,
                                                   "issuerKeyPEM": issuer.key_pem}}))
    objs = render(files=[values])
    assert by_kind(objs, "ConfigMap", "meshctl-config")["data"]["identityTrustAnchorsPEM"] == anchor.cert_pem
    other = certs.generate_trust_anchor()
    values.write_text(yaml.safe_dump({"identity": {"trustAnchorsPEM": other.cert_pem, "issuerCrtPEM": issuer.cert_pem,
                                                   "issuerKeyPEM": issuer.key_pem}}))
    proc = run_cli("install", "--ignore-cluster", "-f", str(values))
    assert proc.returncode == 1 and "identity.issuerCrtPEM: not signed by any of the trust anchors" in proc.stderr


def test_output_json_is_one_list_document():
    proc = run_cli("install", "--ignore-cluster", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "List" and len(doc["items"]) >= 19


# --- against the (fake) cluster ------------------------------------------------------------

def _cli(kubeconfig, *args, **kw):
    return run_cli("--kubeconfig", kubeconfig, *args, **kw)


def test_install_apply_refuse_upgrade_uninstall(kube, cluster, kubeconfig):
    proc = _cli(kubeconfig, "install")
    assert proc.returncode == 1 and "meshctl install --crds" in proc.stderr, proc.stderr

    crds = _cli(kubeconfig, "install", "--crds")
    assert crds.returncode == 0, crds.stderr
    kubectl_apply(kube, cluster, list(yaml.safe_load_all(crds.stdout)))
    assert cluster.api_resources("meshctl.io/v1alpha2") is not None

    proc = _cli(kubeconfig, "install", "--ha")
    assert proc.returncode == 0, proc.stderr
    installed = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kubectl_apply(kube, cluster, installed)

    again = _cli(kubeconfig, "install")
    assert again.returncode == 1 and again.stdout == ""
    assert "already installed" in again.stderr and "meshctl upgrade" in again.stderr

    cm = cluster.get("v1", "configmaps", "meshctl-config", namespace="meshctl")
    issuer = cluster.get("v1", "secrets", "meshctl-identity-issuer", namespace="meshctl")
    webhook = cluster.get("v1", "secrets", "meshctl-proxy-injector-k8s-tls", namespace="meshctl")

    up = _cli(kubeconfig, "upgrade", "--set", "proxyInjector.timeoutSeconds=5")
    assert up.returncode == 0, up.stderr
    upgraded = [d for d in yaml.safe_load_all(up.stdout) if d]
    u_cm = by_kind(upgraded, "ConfigMap", "meshctl-config")
    assert u_cm["data"]["identityTrustAnchorsPEM"] == cm["data"]["identityTrustAnchorsPEM"]
    assert by_kind(upgraded, "Secret", "meshctl-identity-issuer")["data"] == issuer["data"]
    assert by_kind(upgraded, "Secret", "meshctl-proxy-injector-k8s-tls")["data"] == webhook["data"]
    dep = by_kind(upgraded, "Deployment", "meshctl-destination")
    assert dep["spec"]["replicas"] == 3  # --ha kept from the install's stored values
    assert by_kind(upgraded, "MutatingWebhookConfiguration")[0]["webhooks"][0]["timeoutSeconds"] == 5

    un = _cli(kubeconfig, "uninstall")
    assert un.returncode == 0, un.stderr
    to_delete = [d for d in yaml.safe_load_all(un.stdout) if d]
    assert len(to_delete) == len(installed) + len(list(yaml.safe_load_all(crds.stdout)))
    assert kubectl_delete(kube, cluster, to_delete) == []
    leftovers = [o for plural in ("configmaps", "secrets", "serviceaccounts")
                 for o in cluster.list("v1", plural, namespace="meshctl")["items"]]
    assert leftovers == []
    assert cluster.get("v1", "namespaces", "meshctl") is None
    assert cluster.list("rbac.authorization.k8s.io/v1", "clusterroles",
                        label_selector="meshctl.io/control-plane-ns=meshctl")["items"] == []
    assert cluster.api_resources("meshctl.io/v1alpha2") is None


def test_unreachable_cluster_points_at_ignore_cluster(tmp_path, kube):
    kc = kube.kubeconfig(tmp_path / "kc")
    kube.stop()
    proc = run_cli("--kubeconfig", str(kc), "install", timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "--ignore-cluster" in proc.stderr and proc.stderr.count("\n") == 1


def test_control_plane_pods_are_meshed(rendered):
    from meshctl_proxy import config
    for dep in by_kind(rendered, "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        names = [c["name"] for c in spec.get("initContainers", [])]
        assert names[:2] == ["meshctl-init", "meshctl-proxy"], names
        proxy = spec["initContainers"][1]
        assert proxy["restartPolicy"] == "Always"
        env = {e["name"]: e.get("value") for e in proxy["env"]}
        cm = by_kind(rendered, "ConfigMap", "meshctl-config")
        assert env[config.SETTINGS_BY_FIELD["identity_trust_anchors"].env] == cm["data"]["identityTrustAnchorsPEM"]
        want = "localhost.:8080" if dep["metadata"]["name"] == "meshctl-identity" else \
            "meshctl-identity.meshctl.svc.cluster.local.:8080"
        assert env[config.SETTINGS_BY_FIELD["identity_svc_addr"].env] == want
        assert dep["spec"]["template"]["metadata"]["annotations"]["meshctl.io/proxy-version"] == cm["data"]["proxyVersion"]
