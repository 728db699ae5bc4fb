"""The Kubernetes side of destination and identity, end to end with the fake
API server feeding them: discovery through the real destination server to the
proxy's destination client; token review through the real identity service to
the proxy's identity manager."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

import pytest
from fakekube.controllers import pod_status

from meshctl import install as core
from meshctl.destination.server import DestinationServer
from meshctl.identity import certs, service
from meshctl.identity.tokens import ServiceAccountRef, TokenRejected
from meshctl.k8s import Cluster, KubernetesTokenReviewer
from meshctl.k8s.discovery import KubernetesDiscovery
from meshctl.meshconfig import MeshConfig
from meshctl_proxy.discovery.client import DestinationClient

AUTHORITY = "price-api.shop.svc.cluster.local:8080"
MESH = MeshConfig()


def _pod(name, ip, *, meshed, sa="price", ready=True):
    labels = {"app": "price-api"}
    if meshed:
        labels["meshctl.io/control-plane-ns"] = "meshctl"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
           "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "price"}]}}
    pod["status"] = pod_status(pod, ready=ready, ip=ip)
    return pod


def _slice(endpoints):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "price-api-x1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "price-api"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "namespace": "shop", "name": name}}
                          for name, ip, ready in endpoints]}


def _profile(timeout="1s"):
    return {"apiVersion": "meshctl.io/v1alpha2", "kind": "ServiceProfile",
            "metadata": {"name": "price-api.shop.svc.cluster.local", "namespace": "shop"},
            "spec": {"routes": [{"name": "GET /price", "condition": {"method": "GET", "pathRegex": "/price"},
                                 "timeout": timeout}]}}


@pytest.fixture
def shop(kube):
    kube.put_all(core.render_crds())
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    kube.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "price-api", "namespace": "shop"},
              "spec": {"selector": {"app": "price-api"}, "clusterIP": "10.96.7.7",
                       "ports": [{"name": "http", "port": 8080, "targetPort": 9080}]}})
    kube.put(_pod("price-a", "127.0.0.2", meshed=True))
    kube.put(_pod("price-b", "127.0.0.3", meshed=False))
    kube.put(_slice([("price-a", "127.0.0.2", True), ("price-b", "127.0.0.3", True)]))
    kube.put(_profile())
    return kube


async def _running(kubeconfig, **kw):
    discovery = KubernetesDiscovery(lambda: Cluster(kubeconfig=kubeconfig, timeout=5), mesh=MESH, watch_timeout=30,
                                    backoff=0.05, **kw)
    runner = asyncio.get_running_loop().create_task(discovery.run())
    await asyncio.wait_for(discovery.wait_synced(), 10)
    server = DestinationServer(discovery, heartbeat=0.2)
    srv = await server.start("127.0.0.1", 0)
    return discovery, server, srv, runner


async def _stop(server, srv, runner):
    srv.close()
    for t in list(server._connections):
        t.cancel()
    await srv.wait_closed()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


def _eps(resolution):
    return [(str(e), e.meshed, e.identity) for e in resolution.endpoints]


async def _until(watch, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate(watch.resolution):
        gen = watch.generation
        left = deadline - time.monotonic()
        if left <= 0 or not await watch.wait_changed(gen, left):
            raise AssertionError(f"timed out; last resolution: {watch.resolution}")


def test_destination_serves_the_cluster_and_follows_it(shop, kubeconfig):
    async def main():
        discovery, server, srv, runner = await _running(kubeconfig)
        port = srv.sockets[0].getsockname()[1]
        client = DestinationClient(("127.0.0.1", port), initial_wait=5.0, backoff_min=0.05, backoff_max=0.2,
                                   networks=[ipaddress.ip_network("10.0.0.0/8")])
        try:
            res = await client.resolve(AUTHORITY)
            assert res is not None
            identity = "price.shop.serviceaccount.identity.meshctl.cluster.local"
            assert _eps(res) == [("127.0.0.2:9080", True, identity), ("127.0.0.3:9080", False, "")]
            assert res.profile["spec"]["routes"][0]["timeout"] == "1s"
            by_ip = await client.resolve("10.96.7.7:8080")  # the Service's cluster IP
            assert by_ip is not None and len(by_ip.endpoints) == 2
            w = client.watch(AUTHORITY)

            # A new endpoint; one becoming not ready: as the EndpointSlice controller reports them.
            shop.put(_pod("price-c", "127.0.0.4", meshed=True, sa="price-v2"))
            shop.put(_slice([("price-a", "127.0.0.2", True), ("price-b", "127.0.0.3", False),
                             ("price-c", "127.0.0.4", True)]))
            # Pods and slices are separate watches: the view converges to both, whatever order they arrive in.
            v2 = "price-v2.shop.serviceaccount.identity.meshctl.cluster.local"
            await _until(w, lambda r: _eps(r) == [("127.0.0.2:9080", True, identity), ("127.0.0.4:9080", True, v2)])

            # The API server drops every watch (a restart): the reflectors watch again and miss nothing.
            shop.close_watches()
            shop.put(_profile(timeout="250ms"))
            await _until(w, lambda r: r.profile and r.profile["spec"]["routes"][0]["timeout"] == "250ms")

            # History compacted and the watch dropped: 410 Gone, a fresh list, and on.
            lists = discovery.lists
            shop.compact()
            shop.close_watches()
            shop.put(_slice([("price-a", "127.0.0.2", True)]))
            await _until(w, lambda r: [e[0] for e in _eps(r)] == ["127.0.0.2:9080"])
            # A ServiceProfile the proxy could not use is never served; the last good one is dropped too.
            bad = _profile()
            bad["spec"]["routes"][0]["condition"] = {"method": 7}
            shop.put(bad)
            await _until(w, lambda r: r.profile is None)
            deadline = time.monotonic() + 5
            while discovery.lists <= lists and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert discovery.lists > lists, "a 410 must make the reflector list again"

            # The Service goes away: unknown.
            shop.remove("v1", "Service", "price-api", "shop")
            await _until(w, lambda r: r is None or not r.endpoints)
        finally:
            await client.aclose()
            await _stop(server, srv, runner)

    asyncio.run(main())


def test_missing_crd_serves_endpoints_and_picks_profiles_up_later(kube, kubeconfig):
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    kube.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "price-api", "namespace": "shop"},
              "spec": {"ports": [{"name": "http", "port": 8080}]}})
    kube.put(_pod("price-a", "127.0.0.2", meshed=True))
    kube.put(_slice([("price-a", "127.0.0.2", True)]))

    async def main():
        discovery, server, srv, runner = await _running(kubeconfig)
        port = srv.sockets[0].getsockname()[1]
        client = DestinationClient(("127.0.0.1", port), initial_wait=5.0, backoff_min=0.05)
        try:
            res = await client.resolve(AUTHORITY)
            assert res is not None and len(res.endpoints) == 1 and res.profile is None
            kube.put_all(core.render_crds())
            kube.put(_profile())
            w = client.watch(AUTHORITY)
            await _until(w, lambda r: r.profile is not None, timeout=10)
        finally:
            await client.aclose()
            await _stop(server, srv, runner)

    asyncio.run(main())


# --- identity: TokenReview ----------------------------------------------------------------------

def test_token_reviewer(kube, cluster):
    reviewer = KubernetesTokenReviewer(cluster)
    good = kube.issue_token("shop", "web", audiences=("identity.meshctl.io",))
    assert reviewer.review(good) == ServiceAccountRef("shop", "web")
    for token, why in ((kube.issue_token("shop", "web", audiences=("https://kubernetes.default.svc",)), "audiences"),
                       ("not-a-token", "token lookup failed"),
                       (kube.admin_token, "https://kubernetes.default.svc.cluster.local")):
        verdict = reviewer.review(token)
        assert isinstance(verdict, TokenRejected), token
    # The admin user's token authenticates for the API server's audience, not ours.
    plain_user = kube.issue_user_token(__import__("fakekube").User("alice"))
    assert isinstance(KubernetesTokenReviewer(cluster, audience="https://kubernetes.default.svc.cluster.local")
                      .review(plain_user), TokenRejected)
    revoked = kube.issue_token("shop", "web", audiences=("identity.meshctl.io",))
    kube.revoke_token(revoked)
    assert "not authenticated" in reviewer.review(revoked).reason


def test_identity_service_with_token_review_issues_to_the_proxy(kube, kubeconfig, tmp_path):
    from meshctl_proxy.identity.certificates import IdentityManager, IdentitySettings

    anchor = certs.generate_trust_anchor()
    pair = certs.generate_issuer(anchor)
    issuer = certs.load_issuer(cert_pem=pair.cert_pem, key_pem=pair.key_pem, trust_anchors_pem=anchor.cert_pem)
    authority = service.Authority(issuer, names=MESH)
    reviewer = KubernetesTokenReviewer(Cluster(kubeconfig=kubeconfig))
    name = MESH.identity_name("web", "shop")

    async def main():
        server = service.IdentityServer(authority, reviewer, service.ServiceSettings(listen_host="127.0.0.1",
                                                                                     listen_port=0))
        host, port = await server.start()
        task = asyncio.create_task(server.serve_forever())
        try:
            results = {}
            for label, token in (("good", kube.issue_token("shop", "web", audiences=("identity.meshctl.io",))),
                                 ("other-sa", kube.issue_token("shop", "db", audiences=("identity.meshctl.io",)))):
                token_file = tmp_path / f"token-{label}"
                token_file.write_text(token)
                settings = IdentitySettings(local_name=name, trust_anchors_pem=anchor.cert_pem, svc_host=host,
                                            svc_port=port, svc_name=service.service_identity(MESH),
                                            token_file=str(token_file), directory=str(tmp_path / f"id-{label}"))
                manager = IdentityManager(settings)
                try:
                    creds = await asyncio.wait_for(manager.refresh(), 10)
                    results[label] = creds
                except Exception as exc:
                    results[label] = exc
            return results, server.issued, server.refused
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    results, issued, refused = asyncio.run(main())
    assert not isinstance(results["good"], Exception), results["good"]
    assert isinstance(results["other-sa"], Exception)  # a db token cannot get web's identity
    assert issued == 1 and refused >= 1
