"""Admin endpoints, metrics correctness and label bounds, graceful shutdown: against real processes."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx

from .conftest import metric_sum, wait_for


def test_ready_live_and_unknown(proxy):
    assert proxy.admin_get("/ready") == (200, "ready\n")
    assert proxy.admin_get("/live") == (200, "live\n")
    assert proxy.admin_get("/nope")[0] == 404


def test_shutdown_endpoint_disabled_by_default(proxy):
    r = httpx.post(proxy.url("admin", "/shutdown"))
    assert r.status_code == 404
    assert proxy.proc.poll() is None


def test_shutdown_endpoint_when_enabled_needs_post_and_stops_the_proxy(start_proxy):
    p = start_proxy(MESHCTL_PROXY_SHUTDOWN_ENDPOINT_ENABLED="true")
    assert httpx.get(p.url("admin", "/shutdown")).status_code == 405
    assert httpx.post(p.url("admin", "/shutdown")).status_code == 200
    assert p.proc.wait(10) == 0


def test_metrics_count_exactly_the_traffic_sent(start_proxy, app):
    p = start_proxy(MESHCTL_PROXY_POD_NAME="web-1", MESHCTL_PROXY_POD_NAMESPACE="shop",
                    MESHCTL_PROXY_WORKLOAD_KIND="Deployment", MESHCTL_PROXY_WORKLOAD_NAME="web")
    auth = f"127.0.0.1:{app.port}"
    with httpx.Client() as client:
        for _ in range(7):
            client.get(p.url("outbound", "/ok"), headers={"Host": auth})
        for _ in range(3):
            client.get(p.url("outbound", "/status/503"), headers={"Host": auth})
        client.post(p.url("inbound", "/in"), content=b"x" * 100, headers={"Host": auth})
    m = p.metrics()
    base = dict(direction="outbound", authority=auth, tls="no_identity", namespace="shop", pod="web-1",
                deployment="web")
    assert metric_sum(m, "request_total", **base) == 10
    assert metric_sum(m, "response_total", classification="success", status_code="200", **base) == 7
    assert metric_sum(m, "response_total", classification="failure", status_code="503", **base) == 3
    assert metric_sum(m, "response_latency_ms_count", **base) == 10
    assert metric_sum(m, "response_latency_ms_bucket", le="+Inf", **base) == 10
    assert metric_sum(m, "request_total", direction="inbound") == 1
    # Linkerd's bucket boundaries, in order.
    les = [dict(ls)["le"] for (n, ls) in m if n == "response_latency_ms_bucket" and dict(ls).get("status_code") == "200"
           and dict(ls)["direction"] == "outbound"]
    assert les[:6] == ["1", "2", "3", "4", "5", "10"] and les[-2:] == ["50000", "+Inf"]
    # One client connection each way, closed now; bytes were counted.
    assert wait_for(lambda: metric_sum(p.metrics(), "tcp_open_connections", direction="outbound", peer="src") == 0)
    assert metric_sum(m, "tcp_open_total", direction="outbound", peer="src") == 1
    assert metric_sum(m, "tcp_read_bytes_total", direction="outbound", peer="src") > 10 * 30
    assert metric_sum(m, "tcp_write_bytes_total", direction="outbound", peer="src") > 10 * 30
    assert m[("process_resident_memory_bytes", frozenset())] > 1e6
    assert ("process_cpu_seconds_total", frozenset()) in m


def test_authority_labels_are_bounded(start_proxy, app):
    p = start_proxy(MESHCTL_PROXY_MAX_AUTHORITY_LABELS="5")
    with httpx.Client() as client:
        for i in range(40):  # distinct Host headers; unresolvable ones still count as requests (502)
            client.get(p.url("outbound", "/"), headers={"Host": f"host{i}.invalid:{app.port}"})
    m = p.metrics()
    authorities = {dict(ls)["authority"] for (n, ls) in m if n == "request_total"}
    assert len(authorities) <= 6 and "overflow" in authorities
    assert metric_sum(m, "request_total") == 40


def test_sigterm_drains_in_flight_requests_then_exits_zero(start_proxy, app):
    p = start_proxy(MESHCTL_PROXY_SHUTDOWN_GRACE_PERIOD="10s")
    result = {}

    def slow():
        result["r"] = httpx.get(p.url("outbound", "/slow?s=1.0"), headers={"Host": f"127.0.0.1:{app.port}"},
                                timeout=10)

    idle = socket.create_connection(p.outbound)  # an idle keep-alive client: closed at once
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    start = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    try:  # no longer accepting
        socket.create_connection(p.outbound, timeout=1).close()
        refused = False
    except OSError:
        refused = True
    assert idle.recv(10) == b""
    idle.close()
    assert p.proc.wait(10) == 0
    t.join(5)
    assert refused
    assert result["r"].status_code == 200 and result["r"].text == "slow"
    assert time.monotonic() - start < 5


def test_sigterm_grace_period_bounds_the_wait(start_proxy, app):
    p = start_proxy(MESHCTL_PROXY_SHUTDOWN_GRACE_PERIOD="500ms")
    t = threading.Thread(target=lambda: _ignore(lambda: httpx.get(
        p.url("outbound", "/slow?s=5"), headers={"Host": f"127.0.0.1:{app.port}"}, timeout=10)))
    t.start()
    time.sleep(0.3)
    start = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(5) == 0
    assert time.monotonic() - start < 2.5
    t.join(10)


def _ignore(fn):
    try:
        fn()
    except httpx.HTTPError:
        pass


def test_bad_configuration_is_one_line_error(cli):
    r = cli(module="meshctl_proxy", env={"MESHCTL_PROXY_DETECT_TIMEOUT": "soon"})
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "MESHCTL_PROXY_DETECT_TIMEOUT" in r.stderr
