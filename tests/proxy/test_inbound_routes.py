"""Inbound route metrics (meshctl_proxy.policy.inbound_routes): the routes a workload serves.

A real ``meshctl-proxy`` process, a real destination service (the local
registry file, as ``meshctl demo`` runs it) holding a ServiceProfile for the
authority the requests address, and real upstream apps, all on loopback.
Requests reach the proxy's inbound listener addressed to
``web.shop.svc.cluster.local:PORT``, as a meshed caller's outbound proxy
sends them; the proxy's /metrics must count them per route with
``direction="inbound"``, once each, on the fast path (bodiless) and the
general path (a body), HTTP/1.1 and HTTP/2, ``[DEFAULT]`` for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import pytest

from .conftest import metric_sum, wait_for

FQDN = "web.shop.svc.cluster.local"

PROFILE = {
    "apiVersion": "meshctl.io/v1alpha2", "kind": "ServiceProfile",
    "metadata": {"name": FQDN, "namespace": "shop"},
    "spec": {"routes": [
        {"name": "GET /items/{id}", "condition": {"method": "GET", "pathRegex": "/items/[^/]*"}},
        {"name": "POST /items/{id}", "condition": {"method": "POST", "pathRegex": "/items/[^/]*"}},
        # 404 is a failure of this route (its response class), not Linkerd's default 5xx rule.
        {"name": "GET /status/{code}", "condition": {"method": "GET", "pathRegex": "/status/[0-9]+"},
         "responseClasses": [{"condition": {"status": {"min": 404, "max": 404}}, "isFailure": True}]},
    ]},
}


class Destination:
    """meshctl's destination service on a registry file, in the tests' loop thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = 0

    async def start(self, doc: dict) -> "Destination":
        from meshctl.destination.registry import LocalRegistry
        from meshctl.destination.server import DestinationServer

        self.path.write_text(json.dumps(doc))
        self.registry = LocalRegistry(self.path, poll_interval=0.05)
        self.server = DestinationServer(self.registry, heartbeat=0.5)
        self.srv = await self.server.start("127.0.0.1", 0)
        self.port = self.srv.sockets[0].getsockname()[1]
        self.runner = asyncio.get_running_loop().create_task(self.registry.run())
        return self

    async def stop(self) -> None:
        self.srv.close()
        for t in list(self.server._connections):
            t.cancel()
        self.runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.runner


def registry(ports: list[int], profiles: list[dict]) -> dict:
    return {"services": [{"name": "web", "namespace": "shop", "ports": [
        {"port": p, "endpoints": [{"address": f"127.0.0.1:{p}"}]} for p in ports]}], "profiles": profiles}


@pytest.fixture
def destination(loop_thread, apps, tmp_path):
    started = []

    def start(profiles=(PROFILE,)) -> Destination:
        d = loop_thread.run(Destination(tmp_path / "registry.json").start(
            registry([apps["HTTP/1.1"].port, apps["HTTP/2"].port], list(profiles))))
        started.append(d)
        return d

    yield start
    for d in started:
        loop_thread.run(d.stop())


def _client(protocol: str) -> httpx.Client:
    return httpx.Client(http1=protocol != "HTTP/2", http2=protocol == "HTTP/2", timeout=10)


def route_counts(metrics: dict, authority: str) -> dict:
    """{(rt_route, classification, status_code): responses} of the inbound route series of *authority*."""
    out = {}
    for (name, labels), v in metrics.items():
        ls = dict(labels)
        if name == "route_response_total" and ls.get("direction") == "inbound" and ls.get("dst") == authority:
            out[(ls["rt_route"], ls["classification"], ls["status_code"])] = v
    return out


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_inbound_requests_are_counted_by_the_route_they_match(destination, start_proxy, apps, protocol):
    dst = destination()
    p = start_proxy(MESHCTL_PROXY_DESTINATION_SVC_ADDR=f"127.0.0.1:{dst.port}", MESHCTL_PROXY_IDENTITY_DISABLED="true")
    app = apps[protocol]
    authority = f"{FQDN}:{app.port}"
    sent = [("GET", "/items/1"), ("GET", "/items/2?color=red"), ("POST", "/items/3"), ("GET", "/items/4"),
            ("GET", "/other"), ("DELETE", "/items/5"), ("GET", "/status/404"), ("GET", "/status/404"),
            ("GET", "/status/201")]
    with _client(protocol) as c:
        for method, path in sent:
            body = b"x" * 100 if method == "POST" else None  # a body: the general path, not the fast one
            r = c.request(method, p.url("inbound", path), headers={"Host": authority}, content=body)
            assert r.http_version == protocol
    m = p.metrics()
    h2 = protocol == "HTTP/2"  # the HTTP/2 test app answers 200 to every path
    expected = {
        ("GET /items/{id}", "success", "200"): 3,
        ("POST /items/{id}", "success", "200"): 1,
        ("[DEFAULT]", "success", "200"): 2,
        **({("GET /status/{code}", "success", "200"): 3} if h2 else
           {("GET /status/{code}", "success", "201"): 1, ("GET /status/{code}", "failure", "404"): 2}),
    }
    assert route_counts(m, authority) == expected
    for route, n in (("GET /items/{id}", 3), ("POST /items/{id}", 1), ("GET /status/{code}", 3), ("[DEFAULT]", 2)):
        assert metric_sum(m, "route_request_total", direction="inbound", dst=authority, rt_route=route) == n
        assert metric_sum(m, "route_response_latency_ms_count", direction="inbound", dst=authority,
                          rt_route=route) == n
    # Retries and timeouts are the caller's: nothing per attempt on the inbound side.
    assert metric_sum(m, "route_actual_request_total", direction="inbound") == 0
    # And the golden metrics beside them still count each request once.
    assert metric_sum(m, "request_total", direction="inbound") == len(sent)


def test_a_changed_profile_applies_to_the_next_request(destination, start_proxy, apps):
    dst = destination(profiles=())
    p = start_proxy(MESHCTL_PROXY_DESTINATION_SVC_ADDR=f"127.0.0.1:{dst.port}", MESHCTL_PROXY_IDENTITY_DISABLED="true")
    authority = f"{FQDN}:{apps['HTTP/1.1'].port}"
    with httpx.Client(timeout=10) as c:
        assert c.get(p.url("inbound", "/items/1"), headers={"Host": authority}).status_code == 200
        m = p.metrics()
        # A service the mesh knows without a profile: every request is [DEFAULT], as outbound.
        assert route_counts(m, authority) == {("[DEFAULT]", "success", "200"): 1}
        # The registry is polled every 50 ms; the destination service pushes the new profile to the proxy.
        dst.path.write_text(json.dumps(registry([apps["HTTP/1.1"].port, apps["HTTP/2"].port], [PROFILE])))

        def counted_by_route() -> bool:
            c.get(p.url("inbound", "/items/2"), headers={"Host": authority})
            return metric_sum(p.metrics(), "route_request_total", direction="inbound", rt_route="GET /items/{id}") > 0

        assert wait_for(counted_by_route, timeout=10, interval=0.1)


def test_an_http2_request_finding_no_stream_room_is_counted_once(destination, start_proxy, apps):
    """The direct path hands a request to the general path when the pooled connection takes no new
    stream (the app's GOAWAY): its route counts it once, as the golden metrics do."""
    dst = destination()
    p = start_proxy(MESHCTL_PROXY_DESTINATION_SVC_ADDR=f"127.0.0.1:{dst.port}", MESHCTL_PROXY_IDENTITY_DISABLED="true")
    authority = f"{FQDN}:{apps['HTTP/2'].port}"
    with _client("HTTP/2") as c:
        for path in ("/items/0", "/goaway?delay=0", "/items/1"):
            assert c.get(p.url("inbound", path), headers={"Host": authority}).status_code == 200
    m = p.metrics()
    assert route_counts(m, authority) == {("GET /items/{id}", "success", "200"): 2, ("[DEFAULT]", "success", "200"): 1}
    assert metric_sum(m, "route_request_total", direction="inbound") == 3


def test_authorities_the_mesh_does_not_know_get_no_route_series(destination, start_proxy, apps):
    dst = destination()
    p = start_proxy(MESHCTL_PROXY_DESTINATION_SVC_ADDR=f"127.0.0.1:{dst.port}", MESHCTL_PROXY_IDENTITY_DISABLED="true")
    port = apps["HTTP/1.1"].port
    with httpx.Client(timeout=10) as c:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"nothere.shop.svc.cluster.local:{port}"):
            for _ in range(2):
                assert c.get(p.url("inbound", "/items/1"), headers={"Host": host}).status_code == 200
    m = p.metrics()
    assert metric_sum(m, "route_request_total", direction="inbound") == 0
    assert metric_sum(m, "request_total", direction="inbound") == 6


def test_inbound_route_series_count_against_the_series_cap(destination, start_proxy, apps):
    """Fifty routes, each with traffic, under a cap of 600 series: the routes past the cap count under
    dst="overflow", nothing is lost, and /metrics stays within the cap."""
    many = {**PROFILE, "spec": {"routes": [
        {"name": f"GET /r{i}", "condition": {"method": "GET", "pathRegex": f"/r{i}"}} for i in range(50)]}}
    dst = destination(profiles=(many,))
    p = start_proxy(MESHCTL_PROXY_DESTINATION_SVC_ADDR=f"127.0.0.1:{dst.port}", MESHCTL_PROXY_IDENTITY_DISABLED="true",
                    MESHCTL_PROXY_MAX_METRIC_SERIES="600")
    authority = f"{FQDN}:{apps['HTTP/1.1'].port}"
    with httpx.Client(timeout=10) as c:
        for i in range(50):
            assert c.get(p.url("inbound", f"/r{i}"), headers={"Host": authority}).status_code == 200
    m = p.metrics()
    assert metric_sum(m, "route_request_total", direction="inbound") == 50
    assert metric_sum(m, "route_response_total", direction="inbound") == 50
    assert metric_sum(m, "route_request_total", direction="inbound", dst="overflow") > 0
    assert metric_sum(m, "metrics_series") <= 600
    assert metric_sum(m, "metrics_series_refused_total") > 0


class Refuser:
    """A per-request observer that refuses every request (a policy or filter would), as the hook allows."""

    def on_request(self, meta):
        from meshctl_proxy.model import ProxyError

        raise ProxyError(403, "refused by the test observer")


async def _in_process_proxy(dst_port: int):
    from meshctl_proxy import config
    from meshctl_proxy.identity.mesh import Mesh
    from meshctl_proxy.transport.server import Proxy

    cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_DESTINATION_SVC_ADDR": f"127.0.0.1:{dst_port}",
                       "MESHCTL_PROXY_IDENTITY_DISABLED": "true"})
    mesh = Mesh.from_config(cfg)
    proxy = Proxy(cfg, **mesh.seams())
    await proxy.start()
    mesh.attach(proxy)  # the AuthorizingRouter around the inbound router, as serve() does
    return proxy


async def _stop(proxy) -> None:
    proxy.begin_shutdown()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proxy.stopped.wait(), 5)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_a_request_the_hook_refuses_is_counted_once_with_its_refusal(destination, apps, loop_thread, protocol):
    """The refusal is the answer: counted in its route once, on the fast path (bodiless), the general path
    (a body) and whichever path the first request of an authority takes (dispatch, after the lookup)."""
    from .conftest import parse_metrics

    dst = destination()
    proxy = loop_thread.run(_in_process_proxy(dst.port))
    try:
        host, port = proxy.addresses["inbound"]
        authority = f"{FQDN}:{apps[protocol].port}"
        with _client(protocol) as c:
            assert c.get(f"http://{host}:{port}/items/0", headers={"Host": authority}).status_code == 200
            proxy.observers.append(Refuser())  # from here on every request is refused, and never sent
            before = len(apps[protocol].requests) if protocol == "HTTP/1.1" else None
            for body in (None, b"x" * 100, None):
                r = c.request("POST" if body else "GET", f"http://{host}:{port}/items/1", headers={"Host": authority},
                              content=body)
                assert r.status_code == 403
            if before is not None:
                assert len(apps[protocol].requests) == before
        m = parse_metrics(proxy.metrics.render().decode())
        assert route_counts(m, authority) == {("GET /items/{id}", "success", "200"): 1,
                                              ("GET /items/{id}", "success", "403"): 2,
                                              ("POST /items/{id}", "success", "403"): 1}
        assert metric_sum(m, "route_request_total", direction="inbound") == 4
    finally:
        loop_thread.run(_stop(proxy))


def test_a_watch_the_client_evicted_is_watched_again_and_the_profile_kept(destination, apps, loop_thread):
    """The destination client closes the least recently used watch when it needs room (max_watches):
    the next request of that authority watches again, counted by the profile it had meanwhile."""
    from meshctl_proxy.discovery.client import DestinationClient
    from meshctl_proxy.model import ConnectionContext, Endpoint, Request
    from meshctl_proxy.policy.inbound_routes import ProfiledInboundRouter
    from meshctl_proxy.telemetry.route_metrics import RouteMetrics

    dst = destination()

    async def run():
        client = DestinationClient(("127.0.0.1", dst.port), max_watches=1)
        router = ProfiledInboundRouter("127.0.0.1", client, RouteMetrics())
        first, second = f"{FQDN}:{apps['HTTP/1.1'].port}", f"{FQDN}:{apps['HTTP/2'].port}"
        try:
            endpoint = Endpoint("127.0.0.1", apps["HTTP/1.1"].port)
            ctx = ConnectionContext("inbound", ("127.0.0.1", 1), ("127.0.0.1", 2), None)
            requests = [Request(b"GET", b"/items/1", first, [], context=ctx) for _ in range(3)]
            served = await router._look_up(first)
            evicted = served.watch
            router.commit(requests[0], endpoint)  # the profile applied, as by every request
            await router._look_up(second)  # no room for two watches: the first is closed
            assert evicted.closed
            router.commit(requests[1], endpoint)  # watched again; counted by the profile it had
            assert served.watch is not evicted and not served.watch.closed
            await served.watch.wait_changed(0, timeout=5)
            router.commit(requests[2], endpoint)  # and by the new watch's answer
            return [r.route for r in requests], router.metrics.render()
        finally:
            await client.aclose()

    routes, text = loop_thread.run(run())
    assert routes == ["GET /items/{id}"] * 3
    assert f'route_request_total{{direction="inbound",dst="{FQDN}:{apps["HTTP/1.1"].port}",rt_route="GET /items/{{id}}"}} 3' in text
