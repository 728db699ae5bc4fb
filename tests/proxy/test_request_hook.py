"""The per-request hook (meshctl_proxy.hooks): called exactly once per request, on every path.

An in-process proxy with real sockets on loopback; a recording observer is
registered as tap registers its own.  Each protocol (HTTP/1.1 and HTTP/2) is
driven through each router the proxy runs (the outbound DirectRouter and
TrafficRouter, the inbound AuthorizingRouter around the InboundRouter, and a
router without a shortcut), on the fast path (a bodiless GET) and the general
path (a POST with a body).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import pytest

from meshctl_proxy import config
from meshctl_proxy.identity.mesh import Mesh
from meshctl_proxy.model import ProxyError
from meshctl_proxy.policy.router import DirectRouter
from meshctl_proxy.transport.server import Proxy

from .conftest import metric_sum, wait_for


class Recorder:
    """An observer that keeps everything it is told (called from the proxy's loop thread)."""

    def __init__(self, refuse: bool = False) -> None:
        self.lock = threading.Lock()
        self.metas: list = []
        self.events: dict[int, list] = {}
        self.refuse = refuse

    def on_request(self, meta):
        with self.lock:
            self.metas.append(meta)
            self.events[meta.id] = []
        if self.refuse:
            raise ProxyError(403, "refused by the test observer")
        return _Watch(self, meta.id)

    def ends(self) -> int:
        with self.lock:
            return sum(1 for evs in self.events.values() for e in evs if e[0] == "end")


class _Watch:
    def __init__(self, rec: Recorder, rid: int) -> None:
        self.rec, self.rid = rec, rid

    def on_response(self, status, latency_s):
        with self.rec.lock:
            self.rec.events[self.rid].append(("response", status, latency_s))

    def on_end(self, *, grpc_status, error, duration_s, response_bytes):
        with self.rec.lock:
            self.rec.events[self.rid].append(("end", grpc_status, error, duration_s, response_bytes))


class NoShortcut(DirectRouter):
    """Every request through dispatch() (a router with route policy, retries, ...)."""

    def shortcut(self, request):
        return None


async def _start(router: str) -> Proxy:
    cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:9"})
    outbound = {"direct": DirectRouter(), "no-shortcut": NoShortcut()}.get(router)
    mesh = Mesh.from_config(cfg)
    proxy = Proxy(cfg, outbound_router=outbound, **mesh.seams())
    await proxy.start()
    mesh.attach(proxy)  # the inbound AuthorizingRouter, as serve() does
    return proxy


async def _stop(proxy: Proxy) -> None:
    proxy.begin_shutdown()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proxy.stopped.wait(), 5)
    for task in list(proxy.tasks):
        task.cancel()


@pytest.fixture
def running(loop_thread):
    started = []

    def start(router: str, recorder: Recorder | None = None) -> Proxy:
        proxy = loop_thread.run(_start(router))
        started.append(proxy)
        if recorder is not None:
            proxy.observers.append(recorder)
        return proxy

    yield start
    for proxy in started:
        loop_thread.run(_stop(proxy))


def _client(protocol: str) -> httpx.Client:
    if protocol == "HTTP/2":
        return httpx.Client(http1=False, http2=True, timeout=10)
    return httpx.Client(timeout=10)


ROUTERS = [("outbound", "direct"), ("outbound", "traffic"), ("outbound", "no-shortcut"), ("inbound", "authorizing")]


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
@pytest.mark.parametrize("listener,router", ROUTERS)
@pytest.mark.parametrize("with_body", [False, True], ids=["fast", "general"])
def test_the_hook_is_called_once_per_request(running, apps, protocol, listener, router, with_body):
    rec = Recorder()
    proxy = running(router, rec)
    app = apps[protocol]
    host, port = proxy.addresses[listener]
    authority = f"127.0.0.1:{app.port}"
    n = 4
    with _client(protocol) as c:
        for i in range(n):
            url = f"http://{host}:{port}/echo/{i}?secret=1"
            headers = {"Host": authority, "X-Test": "value-never-seen"}
            r = c.post(url, content=b"x" * (100 + i), headers=headers) if with_body else c.get(url, headers=headers)
            assert r.status_code == 200
            assert r.http_version == protocol
    assert wait_for(lambda: rec.ends() == n)
    with rec.lock:
        metas = list(rec.metas)
        events = dict(rec.events)
    assert len(metas) == n  # once per request, not once per path taken or per attempt
    assert [m.id for m in metas] == sorted({m.id for m in metas})
    for i, meta in enumerate(metas):
        assert meta.direction == listener
        assert meta.protocol == protocol
        assert meta.method == ("POST" if with_body else "GET")
        assert meta.path == f"/echo/{i}"  # without the query
        assert meta.authority == authority
        assert meta.dst == ("127.0.0.1", app.port)
        assert meta.src[0] == "127.0.0.1"
        assert meta.route is None
        assert "x-test" in meta.header_names
        assert all(name == name.lower() for name in meta.header_names)
        assert "value-never-seen" not in repr(meta)
        assert meta.tls is False and meta.client_id is None and meta.server_id is None
        kinds = [e[0] for e in events[meta.id]]
        assert kinds == ["response", "end"], kinds
        (_, status, latency), (_, grpc_status, error, duration, nbytes) = events[meta.id]
        assert status == 200 and error is None and grpc_status is None
        assert 0 <= latency <= duration
        assert nbytes > 0


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
@pytest.mark.parametrize("listener,router", [("outbound", "direct"), ("outbound", "no-shortcut")])
def test_an_observer_may_refuse_a_request_before_it_is_sent(running, apps, protocol, listener, router):
    rec = Recorder(refuse=True)
    proxy = running(router, rec)
    app = apps[protocol]
    before = len(app.requests)
    host, port = proxy.addresses[listener]
    with _client(protocol) as c:
        r = c.get(f"http://{host}:{port}/refused", headers={"Host": f"127.0.0.1:{app.port}"})
    assert r.status_code == 403
    assert r.headers["meshctl-proxy-error"] == "refused by the test observer"
    assert len(rec.metas) == 1
    assert len(app.requests) == before  # nothing reached the application


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_a_request_answered_before_any_endpoint_is_still_seen_once(running, apps, protocol):
    rec = Recorder()
    proxy = running("traffic", rec)  # the default router: it knows the proxy's own listeners
    host, port = proxy.addresses["outbound"]
    with _client(protocol) as c:
        # Addressed to the proxy's own outbound listener: a loop, answered 502 without an endpoint.
        r = c.get(f"http://{host}:{port}/loop", headers={"Host": f"{host}:{port}"})
    assert r.status_code == 502
    assert wait_for(lambda: rec.ends() == 1)
    (meta,) = rec.metas
    assert meta.dst is None
    (_, status, _), (_, _, error, _, _) = rec.events[meta.id]
    assert status == 502 and error == "request would loop back into the proxy"


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_inbound_authorization_counts_each_request_once(start_proxy, apps, protocol):
    """Two inbound requests, the second finding no room in the pool: allow_total is 2.

    The HTTP/2 app answers the first with a GOAWAY, so the pooled connection
    takes no new stream.  (The direct path used to ask AuthorizingRouter.direct(),
    which counted, and with no room the general path asked it again: it read 3.)
    """
    p = start_proxy()
    app = apps[protocol]
    with _client(protocol) as c:
        for path in ("/goaway?delay=0", "/"):
            r = c.get(p.url("inbound", path), headers={"Host": f"127.0.0.1:{app.port}"})
            assert r.status_code == 200
    m = p.metrics()
    assert metric_sum(m, "inbound_http_authz_allow_total") == 2
    assert metric_sum(m, "request_total", direction="inbound") == 2
