"""Tap in a cluster: the real CLI -> the fake API server (aggregation) -> the real tap server -> real proxies.

What is real: the proxies, apps, identity service and their mTLS (``meshctl demo up`` on
loopback: each "pod" is an address, its proxy's control port 4190 on it); the tap server
(``meshctl viz tap-server``, a process) with its certificate for the tap identity issued by
that identity service from a ServiceAccount token, exactly as a proxy gets its own; the
TLS between the API server and the tap server (the APIService's caBundle, the front-proxy
client certificate); the CLI as a user runs it.  What is not: the API server is
``tests/fakekube`` (the real HTTP API, its aggregation relay written for these tests), and
the pods are objects put into it whose ``podIP`` is the demo's pod address.
"""

from __future__ import annotations

import os
import signal
import ssl
import time
import urllib.error
import urllib.request

import pytest

from fakekube.server import FakeKube
from proxy.conftest import wait_for
from viz.conftest import Cli, TapServerProcess, send, tap_subscribers

MESH_NS = "meshctl"
VIZ_NS = "meshctl-viz"
HASH = "5d4f8c7b9"


def pod(w, namespace: str = "shop") -> dict:
    """The pod the injector and a kubelet would have made for demo workload *w* (a Deployment's)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{w.name}-{HASH}-x7k2p", "namespace": namespace,
                     "labels": {"app": w.name, "pod-template-hash": HASH, "meshctl.io/control-plane-ns": MESH_NS},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{w.name}-{HASH}",
                                          "uid": "0", "controller": True}]},
        "spec": {"serviceAccountName": w.name,
                 "containers": [{"name": "app", "image": "shop", "ports": [{"containerPort": w.port}]},
                                {"name": "meshctl-proxy", "image": "meshctl",
                                 "env": [{"name": "MESHCTL_PROXY_CONTROL_LISTEN_ADDR", "value": "0.0.0.0:4190"}]}]},
        "status": {"phase": "Running", "podIP": w.pod_ip,
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.fixture(scope="module")
def cluster(mesh, tmp_path_factory):
    """The fake API server holding the mesh's configuration, the demo's pods and what ``viz install``
    renders, with the tap server running as its Deployment would (its certificate for the tap
    identity issued by the demo's identity service, from a ServiceAccount token)."""
    from meshctl.identity.tokens import add_token
    from meshctl.viz import install

    tmp = tmp_path_factory.mktemp("tapcluster")
    with FakeKube() as kube:
        for ns in ("shop", MESH_NS):
            kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        kube.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meshctl-config", "namespace": MESH_NS},
                  "data": {"identityTrustAnchorsPEM": (mesh.state_dir / "ca.crt").read_text(),
                           "identityTrustDomain": "cluster.local", "clusterDomain": "cluster.local"}})
        for w in mesh.plan.workloads:
            kube.put(pod(w))
        objs = install.render(install.build_values(), namespace=VIZ_NS, mesh_namespace=MESH_NS)
        kube.put_all(objs)
        # The tap ServiceAccount's projected token, as the demo's identity service reviews tokens.
        token = add_token(str(mesh.state_dir / "tokens.json"), namespace=VIZ_NS, service_account="tap")
        server = TapServerProcess(kube, objs, tmp, identity_addr=mesh.plan.identity_addr, token=token)
        server.start()
        try:
            yield kube, server, tmp
        finally:
            server.stop()


def stream_post(kube: FakeKube, tmp, path: str, body: dict, *, token: str | None = None):
    """The API request the CLI makes, through the real kubernetes client (meshctl.k8s)."""
    from meshctl import k8s

    cfg = kube.kubeconfig(tmp / f"user-{token or 'admin'}.kubeconfig"[:60], token=token)
    return k8s.Cluster(kubeconfig=str(cfg)).stream_lines("POST", path, body)


def test_the_tap_server_streams_every_request_of_a_burst_through_the_api_server(mesh, cluster):
    import json
    import threading

    kube, _, tmp = cluster
    stream = stream_post(kube, tmp, "/apis/tap.meshctl.io/v1alpha1/watch/namespaces/shop/deployments/"
                                    "product-gateway-api/tap", {"max_rps": 1000})
    lines: list[dict] = []

    def read():
        from meshctl.errors import ClusterError

        try:
            for ln in stream:
                lines.append(json.loads(ln))
        except ClusterError:
            pass  # our own close() below

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=15)
        assert send(mesh, 20) == [200] * 20
        # 20 inbound requests and the 40 the gateway sent on: 60 ends.
        assert wait_for(lambda: sum(1 for d in lines if d["event"] == "end") >= 60, timeout=10)
    finally:
        stream.close()
        reader.join(5)
    reqs = [d for d in lines if d["event"] == "req" and d["direction"] == "inbound"]
    assert sorted(d["path"] for d in reqs) == sorted(f"/api/products/{1 + i % 5}" for i in range(20))
    assert all(d["proxy"] == {"namespace": "shop", "pod": f"product-gateway-api-{HASH}-x7k2p",
                              "workload": "deploy/product-gateway-api"} for d in lines)
    outbound = [d for d in lines if d["event"] == "req" and d["direction"] == "outbound"]
    assert len(outbound) == 40 and all(d["tls"] for d in outbound)
    # The far ends, by pod IP: the product and price APIs' pods.
    assert {d["dst_resource"]["deploy"] for d in outbound} == {"product-api", "price-api"}
    # Once the caller hangs up, the tap server ends its subscription.
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 0, timeout=15)


def test_a_user_without_watch_tap_is_refused(mesh, cluster):
    """RBAC decides who taps what: ``watch deployments/tap`` in group tap.meshctl.io, per namespace."""
    from fakekube.server import User
    from meshctl.k8s import ApiStatusError

    kube, _, tmp = cluster
    path = "/apis/tap.meshctl.io/v1alpha1/watch/namespaces/shop/deployments/product-api/tap"
    alice = kube.issue_user_token(User("alice", groups=("system:authenticated",)))
    kube.deny("watch", "deployments/tap", group="tap.meshctl.io", namespace="shop", username="alice")
    with pytest.raises(ApiStatusError, match='403 Forbidden: .*User "alice" cannot watch resource "deployments/tap" '
                                             'in API group "tap.meshctl.io" in the namespace "shop"'):
        stream_post(kube, tmp, path, {}, token=alice)
    # The CLI says so in one line.
    code, out, err = Cli(mesh, "--kubeconfig", str(kube.kubeconfig(tmp / "alice.kubeconfig", token=alice)), "viz",
                         "tap", "deploy/product-api", "-n", "shop", demo=False).stop(None)
    assert (code, out) == (1, "")
    assert err == ('Error: tap deploy/product-api in namespace shop: 403 Forbidden: deployments.tap.meshctl.io '
                   '"product-api" is forbidden: User "alice" cannot watch resource "deployments/tap" in API group '
                   '"tap.meshctl.io" in the namespace "shop"\n')
    assert tap_subscribers(mesh, "product-api") == 0


def test_only_the_api_server_may_call_the_tap_server(cluster):
    """No front-proxy client certificate (anyone in the cluster's network): 401, nothing tapped."""
    _, server, _ = cluster
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://127.0.0.1:{server.port}/apis/tap.meshctl.io/v1alpha1/watch/namespaces/"
                                 "shop/deployments/product-api/tap", data=b"{}", method="POST",
                                 headers={"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, context=ctx, timeout=5)
    assert info.value.code == 401 and b"front-proxy client certificate" in info.value.read()


# --- the CLI, as a user runs it against the cluster ------------------------------------------------

def cli(cluster, *args: str):
    kube, _, tmp = cluster
    return ["--kubeconfig", str(kube.kubeconfig(tmp / "user.kubeconfig")), *args]


def test_viz_tap_prints_each_request_of_a_20_request_burst(mesh, cluster):
    run = Cli(mesh, *cli(cluster, "viz", "tap", "deploy/product-gateway-api", "-n", "shop"), demo=False)
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=20), run.stop()
        assert send(mesh, 20) == [200] * 20
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=1)
        time.sleep(1.0)  # the last events cross the tap server and the API server
    finally:
        code, out, err = run.stop()
    assert code == 0 and err == "", err
    lines = out.splitlines()
    inbound = [ln for ln in lines if ln.startswith("req ") and " proxy=in " in ln]
    assert sorted(ln.split(":path=")[1] for ln in inbound) == sorted(f"/api/products/{1 + i % 5}" for i in range(20))
    assert len({ln.split()[1] for ln in inbound}) == 20
    for req in inbound:
        rid = req.split()[1]
        assert [ln for ln in lines if ln.startswith(f"rsp {rid} ") and " :status=200 latency=" in ln], req
        assert [ln for ln in lines if ln.startswith(f"end {rid} ") and " duration=" in ln], req
    outbound = [ln for ln in lines if ln.startswith("req ") and " proxy=out " in ln]
    assert len(outbound) == 40 and all(" tls=true " in ln for ln in outbound)
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 0, timeout=15)


def test_viz_tap_to_wide_names_pods_and_identities(mesh, cluster):
    run = Cli(mesh, *cli(cluster, "viz", "tap", "deploy/product-gateway-api", "-n", "shop", "--to",
                         "deploy/product-api", "-o", "wide"), demo=False)
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=20), run.stop()
        send(mesh, 3)
        time.sleep(1.0)
    finally:
        code, out, err = run.stop()
    assert code == 0, err
    reqs = [ln for ln in out.splitlines() if ln.startswith("req ")]
    assert len(reqs) == 3
    for ln in reqs:
        assert f"src_deploy=product-gateway-api src_pod=product-gateway-api-{HASH}-x7k2p src_ns=shop" in ln
        assert f"dst_deploy=product-api dst_pod=product-api-{HASH}-x7k2p dst_ns=shop" in ln
        assert "server_id=product-api.shop.serviceaccount.identity.meshctl.cluster.local" in ln


def test_viz_top_and_profile_in_the_cluster(mesh, cluster):
    import yaml

    top = Cli(mesh, *cli(cluster, "viz", "top", "deploy/product-api", "-n", "shop", "--refresh", "500ms",
                         "--duration", "5s"), demo=False)
    profile = Cli(mesh, *cli(cluster, "viz", "profile", "--tap", "deploy/product-api", "--tap-duration", "5s",
                             "product-api-svc", "-n", "shop"), demo=False)
    assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 2, timeout=20), (top.stop(), profile.stop())
    send(mesh, 6)
    code, out, err = top.stop(None)
    assert code == 0 and "Traceback" not in err, err
    rows = [ln.split() for ln in out.strip().split("\n\n")[-1].splitlines()[2:]]
    by_path = {r[3]: r for r in rows}
    assert by_path["/api/products/1"][:5] == [f"product-gateway-api-{HASH}-x7k2p", f"product-api-{HASH}-x7k2p",
                                              "GET", "/api/products/1", "2"]
    code, out, err = profile.stop(None)
    assert code == 0, err
    assert yaml.safe_load(out)["spec"]["routes"] == [
        {"name": "GET /api/products/{id}", "condition": {"method": "GET", "pathRegex": "/api/products/[^/]*"}}]


def test_viz_tap_without_the_tap_server_says_how_to_install_it(mesh, tmp_path):
    with FakeKube() as bare:
        run = Cli(mesh, "--kubeconfig", str(bare.kubeconfig(tmp_path / "kc")), "viz", "tap", "deploy/web", "-n",
                  "shop", demo=False)
        code, out, err = run.stop(None)
    assert (code, out) == (1, "")
    assert err == "Error: tap server not installed: run meshctl viz install | kubectl apply -f -\n"


def test_viz_tap_says_so_when_the_tap_server_goes_away(mesh, cluster):
    _, server, _ = cluster
    run = Cli(mesh, *cli(cluster, "viz", "tap", "deploy/price-api", "-n", "shop"), demo=False)
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "price-api") == 1, timeout=20), run.stop()
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        code, out, err = run.stop(None, timeout=20)
    finally:
        server.start()
    assert code == 1 and "Traceback" not in err, err
    assert err.startswith("Error: the tap server went away mid-stream (") and err.count("\n") == 1, err


def test_viz_tap_says_so_when_the_tap_server_shuts_down(mesh, cluster):
    _, server, _ = cluster
    run = Cli(mesh, *cli(cluster, "viz", "tap", "deploy/price-api", "-n", "shop"), demo=False)
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "price-api") == 1, timeout=20), run.stop()
        server.stop()  # SIGTERM, as a rollout stops a pod
        code, out, err = run.stop(None, timeout=20)
    finally:
        server.start()
    assert (code, out, err) == (1, "", "Error: the tap server is shutting down; run the command again\n")
    assert "Traceback" not in server.log.read_text()


def test_the_dashboards_live_calls_come_through_the_tap_server(mesh, cluster):
    """In the web pod there is no local mesh: live calls come from the tap server, as ``viz tap``'s do."""
    import asyncio
    import threading

    from meshctl import k8s
    from meshctl.dashboard import live

    kube, _, tmp = cluster
    api = k8s.Cluster(kubeconfig=str(kube.kubeconfig(tmp / "web.kubeconfig")))
    calls = []

    async def collect():
        async for call in live.cluster_calls(api, "shop", "product-api"):
            calls.append(call)
            if len(calls) == 3:
                return

    sender = threading.Thread(target=lambda: wait_for(lambda: tap_subscribers(mesh, "product-api") == 1,
                                                      timeout=20) and send(mesh, 3), daemon=True)
    sender.start()
    asyncio.run(asyncio.wait_for(collect(), 30))
    sender.join(10)
    assert sorted(c.path for c in calls) == ["/api/products/1", "/api/products/2", "/api/products/3"]
    for c in calls:
        assert (c.direction, c.destination, c.status, c.tls) == ("inbound", f"product-api-{HASH}-x7k2p", 200, True)
        assert c.source == f"product-gateway-api-{HASH}-x7k2p"  # named by the identity mTLS proved
