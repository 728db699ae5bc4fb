"""`meshctl check` against the fake API server loaded with what `install`
renders, then mutated; every verdict asserted in the table and in JSON."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import threading
import time

import pytest
from conftest import run_cli
from fakekube.controllers import pod_status, run_deployments

from meshctl import healthcheck
from meshctl import install as core
from meshctl.healthcheck import checks
from meshctl.identity import certs

NS = "meshctl"


@pytest.fixture
def installed(kube):
    """A cluster where `meshctl install --crds` and `meshctl install` were applied and the pods run."""
    kube.put_all(core.render_crds())
    values = core.install_values(ha=False, files=[], sets=[])
    kube.put_all(core.render_control_plane(values, namespace=NS,
                                           certificates=core.make_certificates(values, namespace=NS)))
    run_deployments(kube, namespace=NS)
    return kube


def check(kubeconfig, *args, timeout=60):
    """Run `meshctl check` as a user would; returns (exit code, stdout, stderr)."""
    proc = run_cli("--kubeconfig", kubeconfig, "check", *args, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def verdicts(doc: dict) -> dict[str, tuple[str, str]]:
    """description -> (result, error) from the JSON document."""
    return {c["description"]: (c["result"], c["error"]) for cat in doc["categories"] for c in cat["checks"]}


def table_line(out: str, description: str) -> str:
    for line in out.splitlines():
        if line[2:] == description:
            return line
    raise AssertionError(f"{description!r} not in:\n{out}")


def both(kubeconfig, *args):
    """(table exit, table text, json exit, json document) for the same cluster state."""
    t_rc, t_out, _ = check(kubeconfig, *args)
    j_rc, j_out, _ = check(kubeconfig, *args, "-o", "json")
    return t_rc, t_out, j_rc, json.loads(j_out)


def assert_verdict(t_out, doc, description, result, error_part=""):
    mark = {"success": "√", "warning": "‼", "error": "×"}[result]
    assert table_line(t_out, description).startswith(mark), t_out
    got, error = verdicts(doc)[description]
    assert got == result, (description, got, error)
    assert error_part in error
    if error_part:
        assert error_part in t_out


def test_json_shape_is_exact(installed, kubeconfig):
    rc, out, err = check(kubeconfig, "-o", "json", "--wait", "3s")
    doc = json.loads(out)
    assert set(doc) == {"success", "categories"}
    for cat in doc["categories"]:
        assert set(cat) == {"categoryName", "checks"}
        for c in cat["checks"]:
            assert set(c) == {"description", "hint", "error", "result"}
            assert c["result"] in ("success", "warning", "error")
    names = [c["categoryName"] for c in doc["categories"]]
    assert names == ["kubernetes-api", "kubernetes-version", "meshctl-crds", "meshctl-config", "meshctl-existence",
                     "meshctl-identity", "meshctl-webhooks-and-apisvc-tls", "meshctl-control-plane-proxy",
                     "meshctl-version"]
    assert doc["success"] == (rc == 0)


def test_healthy_install(installed, kubeconfig):
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    failing = {d: v for d, v in verdicts(doc).items() if v[0] != "success"}
    assert failing == {}, failing
    assert t_rc == 0 and j_rc == 0 and doc["success"] is True
    assert t_out.rstrip().endswith("Status check results are √")
    rc, short, _ = check(kubeconfig, "-o", "short", "--wait", "3s")
    assert rc == 0 and short == "Status check results are √\n"


def test_pods_not_ready_fails_after_wait_and_stops(installed, kubeconfig):
    pod = installed.list("v1", "Pod", NS)[0]
    pod["status"] = pod_status(pod, ready=False)
    installed.put(pod)
    start = time.monotonic()
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert time.monotonic() - start < 20
    assert t_rc == j_rc == 1 and doc["success"] is False
    assert_verdict(t_out, doc, "control plane pods are ready", "error", f"pod/{pod['metadata']['name']} is Pending")
    # Fatal: nothing after it ran.
    assert "meshctl-identity" not in [c["categoryName"] for c in doc["categories"]]
    assert "meshctl-identity" not in t_out
    assert "hint: look at `kubectl -n <mesh namespace> get pods`" in t_out


def test_pods_becoming_ready_during_wait_pass(installed, kubeconfig):
    pod = installed.list("v1", "Pod", NS)[0]
    ready_status = pod["status"]
    pod["status"] = pod_status(pod, ready=False)
    installed.put(pod)

    def become_ready():
        time.sleep(2.0)
        pod["status"] = ready_status
        installed.put(pod)

    t = threading.Thread(target=become_ready)
    t.start()
    rc, out, _ = check(kubeconfig, "-o", "json", "--wait", "6s")
    t.join()
    assert verdicts(json.loads(out))["control plane pods are ready"] == ("success", "")


def test_unschedulable_pod(installed, kubeconfig):
    pod = installed.list("v1", "Pod", NS)[1]
    pod["status"]["conditions"][0] = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": "0/3 nodes are available: 3 Insufficient cpu."}
    installed.put(pod)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "no unschedulable pods", "error", "0/3 nodes are available: 3 Insufficient cpu.")


def _replace_issuer(kube, issuer: certs.KeyPair, anchor: certs.KeyPair):
    secret = kube.get("v1", "Secret", core.ISSUER_SECRET, NS)
    secret["data"]["tls.crt"] = base64.b64encode(issuer.cert_pem.encode()).decode()
    secret["data"]["tls.key"] = base64.b64encode(issuer.key_pem.encode()).decode()
    kube.put(secret)
    cm = kube.get("v1", "ConfigMap", "meshctl-config", NS)
    cm["data"]["identityTrustAnchorsPEM"] = anchor.cert_pem
    kube.put(cm)


def test_expired_issuer(installed, kubeconfig):
    anchor = certs.generate_trust_anchor()
    past = certs.utcnow() - dt.timedelta(days=400)
    issuer = certs.generate_issuer(anchor, now=past, lifetime=dt.timedelta(days=365))
    _replace_issuer(installed, issuer, anchor)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "issuer cert is within its validity period", "error", "issuer certificate expired at")
    assert_verdict(t_out, doc, "certificate config is valid", "success")
    assert "issuer cert is valid for at least 60 days" not in verdicts(doc)  # fatal stop before it


def test_issuer_expiring_soon_warns_and_fail_on_warning(installed, kubeconfig):
    anchor = certs.generate_trust_anchor()
    issuer = certs.generate_issuer(anchor, lifetime=dt.timedelta(days=30))
    _replace_issuer(installed, issuer, anchor)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert_verdict(t_out, doc, "issuer cert is valid for at least 60 days", "warning", "issuer certificate will expire")
    assert_verdict(t_out, doc, "issuer cert is within its validity period", "success")
    warnings_only = all(v[0] != "error" for v in verdicts(doc).values())
    assert warnings_only, verdicts(doc)
    assert t_rc == j_rc == 0 and doc["success"] is True
    rc, out, _ = check(kubeconfig, "--wait", "3s", "--fail-on-warning", "-o", "json")
    assert rc == 1 and json.loads(out)["success"] is False


def test_issuer_from_another_anchor(installed, kubeconfig):
    other = certs.generate_trust_anchor()
    secret = installed.get("v1", "Secret", core.ISSUER_SECRET, NS)
    issuer = certs.generate_issuer(other)
    secret["data"]["tls.crt"] = base64.b64encode(issuer.cert_pem.encode()).decode()
    secret["data"]["tls.key"] = base64.b64encode(issuer.key_pem.encode()).decode()
    installed.put(secret)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert_verdict(t_out, doc, "issuer cert is issued by the trust anchor", "error", "not signed by any of the trust")


def test_missing_crd(installed, kubeconfig):
    installed.remove("apiextensions.k8s.io/v1", "CustomResourceDefinition", "serviceprofiles.meshctl.io")
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "control plane CustomResourceDefinitions exist", "error",
                   "missing serviceprofiles.meshctl.io")
    assert [c["categoryName"] for c in doc["categories"]][-1] == "meshctl-crds"
    assert "meshctl install --crds" in t_out


def test_webhook_cert_mismatch(installed, kubeconfig):
    other_ca = certs.generate_trust_anchor(common_name="someone-else")
    mwc = installed.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", core.WEBHOOK_CONFIG)
    mwc["webhooks"][0]["clientConfig"]["caBundle"] = base64.b64encode(other_ca.cert_pem.encode()).decode()
    installed.put(mwc)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "proxy-injector webhook has valid cert", "success")
    assert_verdict(t_out, doc, "proxy-injector caBundle matches its cert", "error", "does not sign")
    # The hint's repair: `meshctl upgrade | kubectl apply -f -` replaces the mismatched pair.
    up = run_cli("--kubeconfig", kubeconfig, "upgrade", "-o", "json")
    assert up.returncode == 0, up.stderr
    for obj in json.loads(up.stdout)["items"]:
        if obj["kind"] in ("MutatingWebhookConfiguration", "Secret"):
            installed.put(obj)
    rc, out, _ = check(kubeconfig, "-o", "json", "--wait", "1s")
    assert verdicts(json.loads(out))["proxy-injector caBundle matches its cert"] == ("success", "")


def test_webhook_cert_for_wrong_name(installed, kubeconfig):
    ca = certs.generate_trust_anchor()
    key = certs.new_private_key()
    leaf = certs.issue_leaf(ca, public_key=key.public_key(), dns_name="meshctl-proxy-injector.other.svc")
    secret = installed.get("v1", "Secret", core.WEBHOOK_SECRET, NS)
    secret["data"]["tls.crt"] = base64.b64encode(certs.cert_to_pem(leaf).encode()).decode()
    installed.put(secret)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert_verdict(t_out, doc, "proxy-injector webhook has valid cert", "error",
                   "is for meshctl-proxy-injector.other.svc, not meshctl-proxy-injector.meshctl.svc")


def test_missing_rbac_and_config_map(installed, kubeconfig):
    installed.remove("rbac.authorization.k8s.io/v1", "ClusterRole", "meshctl-meshctl-identity")
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert_verdict(t_out, doc, "control plane ClusterRoles exist", "error", "missing ClusterRoles: meshctl-meshctl-identity")


def test_old_kubernetes(installed, kubeconfig):
    installed.git_version = "v1.27.4"
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "is running the minimum Kubernetes API version", "error",
                   "Kubernetes is on version [1.27], but version [1.29] or more recent is required")


def test_control_plane_version_differs_from_cli(installed, kubeconfig):
    cm = installed.get("v1", "ConfigMap", "meshctl-config", NS)
    cm["data"]["proxyVersion"] = "0.0.9"
    installed.put(cm)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--wait", "1s")
    assert_verdict(t_out, doc, "control plane and cli versions match", "warning",
                   "control plane is running version 0.0.9 but the CLI is")


def test_unreachable_api_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kc = tmp_path / "kc"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    t_rc, t_out, j_rc, doc = both(str(kc), "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "can initialize the client", "success")
    assert_verdict(t_out, doc, "can query the Kubernetes API", "error", "cannot reach the Kubernetes API")
    assert len(doc["categories"]) == 1


def test_a_hanging_api_server_does_not_hang_check(tmp_path):
    # Accepts connections and never answers: each request waits; the run ends at --wait.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    kc = tmp_path / "kc"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    try:
        start = time.monotonic()
        rc, out, _ = check(str(kc), "--wait", "1s", "-o", "json")
        elapsed = time.monotonic() - start
    finally:
        listener.close()
    assert rc == 1
    assert verdicts(json.loads(out))["can query the Kubernetes API"][0] == "error"
    assert elapsed < 15, elapsed  # interpreter start-up + 2 s, not a request timeout per check


def test_pre_on_an_empty_cluster(kube, kubeconfig):
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--pre", "--wait", "3s")
    assert t_rc == j_rc == 0, t_out
    assert [c["categoryName"] for c in doc["categories"]] == ["kubernetes-api", "kubernetes-version",
                                                              "pre-kubernetes-setup"]
    assert all(v[0] == "success" for v in verdicts(doc).values())


def test_pre_permissions_clock_skew_and_existing_namespace(kube, kubeconfig):
    kube.deny("create", "clusterroles", group="rbac.authorization.k8s.io")
    kube.deny("create", "secrets", namespace=NS)
    kube.clock_offset = 600
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--pre", "--wait", "3s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "can create non-namespaced resources", "error", "missing permissions to create clusterroles")
    assert_verdict(t_out, doc, "can create namespaced resources", "error", "missing permissions to create secrets")
    assert_verdict(t_out, doc, "no clock skew detected", "warning", "between this host and the API server (more than 300s)")
    assert_verdict(t_out, doc, "control plane namespace does not already exist", "error",
                   'The "meshctl" namespace already exists')


def _meshed_pod(installed, name, *, ready=True, anchors=None, version=None):
    cm = installed.get("v1", "ConfigMap", "meshctl-config", NS)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"meshctl.io/control-plane-ns": NS, "app": name},
                        "annotations": {checks.PROXY_VERSION_ANNOTATION: version or cm["data"]["proxyVersion"]}},
           "spec": {"initContainers": [{"name": "meshctl-proxy", "image": "x", "restartPolicy": "Always",
                                        "env": [{"name": checks.TRUST_ANCHORS_ENV,
                                                 "value": anchors or cm["data"]["identityTrustAnchorsPEM"]}]}],
                    "containers": [{"name": "app", "image": "app"}]}}
    pod["status"] = pod_status(pod, ready=ready)
    installed.put(pod)


def test_proxy_data_plane(installed, kubeconfig):
    installed.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    _meshed_pod(installed, "web")
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--proxy", "-n", "shop", "--wait", "3s")
    assert doc["categories"][-1]["categoryName"] == "meshctl-data-plane"
    assert_verdict(t_out, doc, "data plane proxies are ready", "success")
    assert_verdict(t_out, doc, "data plane proxies certificate match CA", "success")
    assert all(c["result"] == "success" for c in doc["categories"][-1]["checks"])
    assert t_rc == j_rc == 0, t_out

    _meshed_pod(installed, "stale", anchors=certs.generate_trust_anchor().cert_pem, version="0.0.1")
    _meshed_pod(installed, "sick", ready=False)
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--proxy", "-n", "shop", "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "data plane proxies are ready", "error", "pod/sick: the meshctl-proxy container is not ready")
    assert_verdict(t_out, doc, "data plane proxies certificate match CA", "error", "pod/stale")
    assert_verdict(t_out, doc, "data plane is up-to-date", "warning", "pod/stale runs proxy version 0.0.1")


def test_proxy_missing_namespace(installed, kubeconfig):
    t_rc, t_out, j_rc, doc = both(kubeconfig, "--proxy", "-n", "nowhere", "--wait", "1s")
    assert_verdict(t_out, doc, "data plane namespace exists", "error", 'The "nowhere" namespace does not exist')


def test_bad_flags(kubeconfig):
    # Usage errors: exit 2 (tests/test_cli_conventions.py checks every command).
    rc, out, err = check(kubeconfig, "--wait", "soon")
    assert rc == 2 and "--wait: expected a duration" in err and out == ""
    rc, out, err = check(kubeconfig, "-n", "shop")
    assert rc == 2 and "--namespace only applies with --proxy" in err


# --- the runner, on plain facts ---------------------------------------------------------------------

def test_runner_semantics_on_plain_facts():
    calls = []

    def flaky(n):
        calls.append(n)
        if len(calls) < 3:
            raise healthcheck.Failed(f"not yet ({len(calls)})")

    def never(_):
        raise healthcheck.Failed("never")

    def hangs(_):
        time.sleep(30)

    cats = [healthcheck.Category("a", (
        healthcheck.Check("a.flaky", "flaky", "h", flaky, ("n",), retry=True),
        healthcheck.Check("a.warn", "warns", "h", never, ("n",), warning=True),
        healthcheck.Check("a.hangs", "hangs", "h", hangs, ("n",)),
        healthcheck.Check("a.fatal", "fatal", "h", never, ("n",), fatal=True),
        healthcheck.Check("a.after", "after", "h", lambda n: None, ("n",)),
    ))]
    now = [0.0]

    def clock():
        return time.monotonic() + now[0]

    def sleep(s):
        now[0] += s

    start = time.monotonic()
    results = list(healthcheck.run(cats, healthcheck.DictFacts({"n": 1}), deadline=time.monotonic() + 3.5,
                                   attempt_timeout=1.0, clock=clock, sleep=sleep))
    assert time.monotonic() - start < 5
    assert [(r.id, r.result) for r in results] == [("a.flaky", "success"), ("a.warn", "warning"),
                                                   ("a.hangs", "error"), ("a.fatal", "error")]
    assert len(calls) == 3
    assert results[2].error.startswith("timed out")
    report = healthcheck.Report(results=results)
    assert report.success is False
    assert healthcheck.render_short(report).splitlines()[0] == "a"


def test_check_ids_are_unique_and_stable():
    ids = [c.id for c in checks.all_checks()]
    assert len(ids) == len(set(ids))
    for c in checks.all_checks():
        assert c.id.split(".")[0] in {cat.name for cat in checks.categories(pre=True) + checks.categories(proxy=True)} \
            or c.id.startswith("meshctl-webhooks")
        assert c.hint and c.description
        assert not (c.fatal and c.warning)


def test_spinner_only_on_a_terminal_and_only_on_stderr(installed, kubeconfig):
    import os
    import pty
    import subprocess
    import sys

    from conftest import ROOT, SRC

    pod = installed.list("v1", "Pod", NS)[0]
    pod["status"] = pod_status(pod, ready=False)
    installed.put(pod)
    args = [sys.executable, "-m", "meshctl", "--kubeconfig", kubeconfig, "check", "--wait", "3s"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1"}
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT, timeout=60)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    tty_err = b"".join(chunks).decode()
    assert "control plane pods are ready -- waiting" in tty_err
    assert "\x1b" not in proc.stdout.decode() and "waiting" not in proc.stdout.decode()
    piped = run_cli("--kubeconfig", kubeconfig, "check", "--wait", "2s")
    assert piped.stderr == "" and "\x1b" not in piped.stdout


def test_no_kubeconfig_fails_at_the_client(tmp_path):
    t_rc, t_out, j_rc, doc = both(str(tmp_path / "missing"), "--wait", "1s")
    assert t_rc == j_rc == 1
    assert_verdict(t_out, doc, "can initialize the client", "error", "cannot load kubeconfig")
    assert len(doc["categories"]) == 1 and len(doc["categories"][0]["checks"]) == 1
