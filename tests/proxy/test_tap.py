"""Tap on the proxy's control listener: filters, rate limit, bounded queues, access, the wire protocol.

A real ``Proxy`` runs in a background loop with its control listener on
loopback; subscribers are real sockets (``meshctl.viz.tap.subscribe``, the
CLI's client).  Requests are reported by a driver that calls the proxy's
observers exactly as the request path's hook does (contract A), so each rule
of the tap server is tested on its own; tests/proxy/test_tap_paths.py drives
real traffic through HTTP/1 and HTTP/2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time

import pytest

from meshctl.viz import tap as client
from meshctl_proxy import config
from meshctl_proxy.telemetry import tap
from meshctl_proxy.transport.server import Proxy

from .conftest import parse_metrics


@dataclasses.dataclass(frozen=True, slots=True)
class Meta:
    """Contract A's RequestMeta, field for field."""

    id: int
    direction: str = "inbound"
    protocol: str = "HTTP/1.1"
    src: tuple = ("127.0.0.9", 40000)
    dst: tuple | None = ("127.0.0.1", 8080)
    tls: bool = False
    client_id: str | None = None
    server_id: str | None = None
    method: str = "GET"
    scheme: str = "http"
    authority: str = "web.shop.svc.cluster.local:8080"
    path: str = "/api/products/1"
    route: str | None = None
    header_names: tuple = ("accept", "user-agent")


def drive(proxy: Proxy, metas, *, status: int = 200) -> None:
    """What the request path does for each request: on_request, then on_response and on_end on each watch."""
    for meta in metas:
        watches = [w for o in list(proxy.observers) if (w := o.on_request(meta)) is not None]
        for w in watches:
            w.on_response(status, 0.0045)
        for w in watches:
            w.on_end(grpc_status=None, error=None, duration_s=0.0055, response_bytes=42)


@pytest.fixture
def tap_proxy(loop_thread):
    cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_IDENTITY_DISABLED": "true",
                       "MESHCTL_PROXY_POD_NAME": "web-0", "MESHCTL_PROXY_POD_NAMESPACE": "shop",
                       "MESHCTL_PROXY_WORKLOAD_KIND": "Deployment", "MESHCTL_PROXY_WORKLOAD_NAME": "web"})
    proxy = Proxy(cfg)
    loop_thread.run(proxy.start())
    yield proxy
    for server in proxy.servers.values():
        server.close()
    loop_thread.run(_settle())


async def _settle():
    await asyncio.sleep(0)


def target_of(proxy: Proxy) -> client.TapTarget:
    return client.TapTarget("shop", "deployment", "web", "web-0", proxy.addresses["control"], None)


def on_loop(loop_thread, fn, *args):
    async def call():
        return fn(*args)

    return loop_thread.run(call())


class Subscription:
    """A subscriber in its own thread's loop (the test's), collecting events."""

    def __init__(self, proxy: Proxy, query: client.TapQuery) -> None:
        import threading

        self.events: list[dict] = []
        self.error: BaseException | None = None
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self.task = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(query,), daemon=True)
        self.thread.start()
        assert self.ready.wait(5), "no hello from the proxy"

    def _run(self, query) -> None:
        async def main():
            try:
                async for ev in client.subscribe(target_of(self.proxy), query, None):
                    self.events.append(ev)
                    if ev["event"] == "hello":
                        self.ready.set()
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                self.error = exc
                self.ready.set()

        self.task = self.loop.create_task(main())
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline and self.error is None:
            time.sleep(0.01)
        return self.events

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(5)


# --- pure pieces ------------------------------------------------------------------------------

@pytest.mark.parametrize("doc, field", [
    ({"direction": "sideways"}, "filter.direction"),
    ({"method": 3}, "filter.method"),
    ({"path": "api"}, "filter.path"),
    ({"dst": "1.2.3.4:80"}, "filter.dst"),
    ({"max_rps": 0}, "filter.max_rps"),
    ({"max_rps": True}, "filter.max_rps"),
    ({"header_names": "yes"}, "filter.header_names"),
    ({"colour": "red"}, "filter.colour"),
])
def test_a_bad_filter_names_its_field(doc, field):
    with pytest.raises(tap.FilterError, match=field.replace(".", r"\.")):
        tap.TapFilter.from_json(json.dumps(doc).encode())


def test_not_json_and_not_an_object_are_refused():
    with pytest.raises(tap.FilterError, match="not JSON"):
        tap.TapFilter.from_json(b"{")
    with pytest.raises(tap.FilterError, match="JSON object"):
        tap.TapFilter.from_json(b"[]")


def test_filter_matches_each_field():
    f = tap.TapFilter.from_json(json.dumps({"direction": "outbound", "method": "post", "authority": "a:80",
                                            "path": "/api/", "dst": ["10.0.0.1:4143"]}).encode())
    good = Meta(1, direction="outbound", method="POST", authority="a:80", path="/api/x", dst=("10.0.0.1", 4143))
    assert f.matches(good)
    for change in ({"direction": "inbound"}, {"method": "GET"}, {"authority": "b:80"}, {"path": "/apix"},
                   {"dst": ("10.0.0.2", 4143)}, {"dst": None}):
        assert not f.matches(dataclasses.replace(good, **change)), change
    assert tap.TapFilter().matches(Meta(2))


def test_token_bucket_admits_the_rate_and_refills():
    now = [0.0]
    bucket = tap.TokenBucket(10, clock=lambda: now[0])
    assert sum(bucket.admit() for _ in range(50)) == 10  # a burst of at most one second's worth
    now[0] += 0.5
    assert sum(bucket.admit() for _ in range(50)) == 5
    slow = tap.TokenBucket(0.5, clock=lambda: now[0])
    assert slow.admit() and not slow.admit()
    now[0] += 2.0
    assert slow.admit()


def test_times_are_the_watch_own_unless_the_hook_saw_a_wait_before_the_endpoint():
    # The hook's clock (uvloop's loop.time) moves in whole milliseconds.
    assert tap._finer(0.001, 0.00031) == 0.00031
    assert tap._finer(0.0, 0.00031) == 0.00031
    assert tap._finer(0.250, 0.00031) == 0.250  # waited for discovery before on_request


def test_access_rules():
    open_access = tap.TapAccess(identity_required=False, tap_identity="tap.x")
    assert open_access.check(peer_host="127.0.0.1", client_identity=None, tls=False) is None
    assert open_access.check(peer_host="::1", client_identity=None, tls=False) is None
    assert "loopback" in open_access.check(peer_host="10.1.2.3", client_identity=None, tls=False)
    mtls = tap.TapAccess(identity_required=True, tap_identity="tap.x")
    assert mtls.check(peer_host="10.1.2.3", client_identity="tap.x", tls=True) is None
    assert "requires mTLS" in mtls.check(peer_host="127.0.0.1", client_identity=None, tls=False)
    assert "web.x is not the tap service's tap.x" in mtls.check(peer_host="10.1.2.3", client_identity="web.x",
                                                                tls=True)
    assert "disabled" in tap.TapAccess(True, "").check(peer_host="1.2.3.4", client_identity="tap.x", tls=True)


# --- the server -------------------------------------------------------------------------------

def test_observer_is_registered_only_while_someone_subscribes(loop_thread, tap_proxy):
    assert tap_proxy.observers == []
    sub = Subscription(tap_proxy, client.TapQuery())
    try:
        assert sub.events[0] == {"event": "hello", "namespace": "shop", "pod": "web-0", "workload": "deployment/web",
                                 "filter": {"direction": None, "method": None, "authority": None, "path": None,
                                            "dst": [], "max_rps": 100.0, "header_names": False}}
        assert tap_proxy.observers == [tap_proxy.tap.hub]
    finally:
        sub.close()
    deadline = time.monotonic() + 5
    while tap_proxy.observers and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tap_proxy.observers == []
    assert tap_proxy.tap.hub.subscribers == []


def test_events_of_matching_requests_in_order_with_contract_fields(loop_thread, tap_proxy):
    sub = Subscription(tap_proxy, client.TapQuery(direction="inbound", path="/api/"))
    try:
        metas = [Meta(i, path=f"/api/products/{i}", tls=True, client_id="gw.shop") for i in range(5)]
        metas += [Meta(10, direction="outbound"), Meta(11, path="/healthz")]
        on_loop(loop_thread, drive, tap_proxy, metas)
        events = sub.wait_for(1 + 15)
        assert [e["event"] for e in events[1:]] == ["req", "rsp", "end"] * 5
        req, rsp, end = events[1:4]
        assert req == {"event": "req", "id": 0, "direction": "inbound", "protocol": "HTTP/1.1",
                       "src": "127.0.0.9:40000", "dst": "127.0.0.1:8080", "tls": True, "client_id": "gw.shop",
                       "server_id": None, "method": "GET", "scheme": "http",
                       "authority": "web.shop.svc.cluster.local:8080", "path": "/api/products/0", "route": None,
                       "ts": req["ts"]}
        assert abs(req["ts"] - time.time()) < 60
        assert rsp == {"event": "rsp", "id": 0, "status": 200, "latency_ms": 4.5}
        assert end == {"event": "end", "id": 0, "grpc_status": None, "error": None, "duration_ms": 5.5,
                       "response_bytes": 42}
        assert [e["id"] for e in events[1::3]] == [0, 1, 2, 3, 4]
        time.sleep(0.1)
        assert len(sub.events) == 16  # nothing of the outbound or /healthz requests
    finally:
        sub.close()


def test_header_names_only_when_asked(loop_thread, tap_proxy):
    with_names = Subscription(tap_proxy, client.TapQuery(header_names=True))
    without = Subscription(tap_proxy, client.TapQuery())
    try:
        on_loop(loop_thread, drive, tap_proxy, [Meta(1)])
        assert with_names.wait_for(4)[1]["header_names"] == ["accept", "user-agent"]
        assert "header_names" not in without.wait_for(4)[1]
    finally:
        with_names.close()
        without.close()


def test_max_rps_bounds_requests_tapped_per_subscriber(loop_thread, tap_proxy):
    limited = Subscription(tap_proxy, client.TapQuery(max_rps=5))
    everything = Subscription(tap_proxy, client.TapQuery(max_rps=1000))
    try:
        on_loop(loop_thread, drive, tap_proxy, [Meta(i) for i in range(50)])
        assert len(everything.wait_for(1 + 150)) == 151
        time.sleep(0.1)
        reqs = [e for e in limited.events if e["event"] == "req"]
        assert len(reqs) == 5
        # Whole requests: every tapped request's rsp and end came too, nothing of the others.
        assert sorted(e["id"] for e in limited.events[1:]) == sorted([e["id"] for e in reqs] * 3)
    finally:
        limited.close()
        everything.close()


def test_a_subscriber_that_does_not_read_loses_events_counted_and_traffic_never_waits(loop_thread, tap_proxy,
                                                                                      monkeypatch):
    monkeypatch.setattr(tap, "QUEUE_CAPACITY", 200)
    host, port = tap_proxy.addresses["control"]
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, port))
    body = json.dumps({"max_rps": 100000}).encode()
    stuck.sendall(b"POST /tap HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    try:
        deadline = time.monotonic() + 5
        while not tap_proxy.tap.hub.subscribers and time.monotonic() < deadline:
            time.sleep(0.01)
        # Batches of 50 requests (150 events), until the kernel's buffers are full and the queue overflows
        # (bounded: at most 4,000 batches).
        sub = tap_proxy.tap.hub.subscribers[0]
        slowest, batch = 0.0, 0
        while batch < 4000 and sub.dropped < 1000:
            metas = [Meta(batch * 50 + i) for i in range(50)]
            started = time.perf_counter()
            on_loop(loop_thread, drive, tap_proxy, metas)
            slowest = max(slowest, time.perf_counter() - started)
            batch += 1
        assert sub.paused  # the socket pushed back...
        assert len(sub.pending) == 200  # ...the queue filled to its bound...
        assert sub.dropped >= 1000  # ...and what came next was dropped
        assert slowest < 1.0  # a batch never waited on the subscriber
        metrics = parse_metrics(_admin_get(tap_proxy, "/metrics"))
        assert metrics[("tap_events_dropped_total", frozenset())] == sub.dropped
        assert metrics[("tap_subscribers", frozenset())] == 1
    finally:
        stuck.close()


def _admin_get(proxy: Proxy, path: str) -> str:
    import urllib.request

    host, port = proxy.addresses["admin"]
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
        return r.read().decode()


def _raw_request(proxy: Proxy, request: bytes) -> bytes:
    with socket.create_connection(proxy.addresses["control"], timeout=5) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("request_bytes, status, text", [
    (b"POST /tap HTTP/1.1\r\nhost: x\r\ncontent-length: 24\r\n\r\n{\"direction\": \"upwards\"}", 400,
     b"filter.direction: expected inbound or outbound"),
    (b"GET /tap HTTP/1.1\r\nhost: x\r\n\r\n", 405, b"use POST /tap"),
    (b"POST /other HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n", 404, b"not found"),
    (b"POST /tap HTTP/1.1\r\nhost: x\r\ncontent-length: 20000\r\n\r\n" + b" " * 20000, 413, b"larger than"),
])
def test_refusals_are_one_plain_line(tap_proxy, request_bytes, status, text):
    answer = _raw_request(tap_proxy, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert text in answer


def test_client_reports_a_refusal_with_the_proxy_and_reason(tap_proxy):
    async def main():
        async for _ in client.subscribe(target_of(tap_proxy), client.TapQuery(max_rps=-1), None):
            pass

    with pytest.raises(client.TapError, match=r"deploy/web \(127\.0\.0\.1:\d+\) refused tap: 400 filter\.max_rps"):
        asyncio.run(main())


def test_shutdown_ends_each_stream_cleanly(loop_thread, tap_proxy):
    sub = Subscription(tap_proxy, client.TapQuery())
    try:
        on_loop(loop_thread, drive, tap_proxy, [Meta(1)])
        sub.wait_for(4)
        on_loop(loop_thread, tap_proxy.tap.shutdown)
        sub.thread.join(5)
        assert isinstance(sub.error, client.StreamEnded) and "ended the stream" in str(sub.error)
        assert len(sub.events) == 4  # everything queued before the end was delivered
    finally:
        sub.close()
