"""mTLS between two real proxies on loopback: identities in metrics and headers, policy, rotation, fail-closed.

Proxy A (client side, outbound) and proxy B (server side, inbound) run in one
background event loop with the production wiring (``Mesh`` seams, as
``meshctl_proxy.transport.server.serve`` does).  A's outbound router names B's identity
for B's address, as the destination service does for a meshed endpoint.  The
identity service is a real ``meshctl identity serve`` process, so it can be
killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, SRC, run_cli
from helpers_identity import SVC_NAME
from meshctl.identity import tokens
from meshctl_proxy.policy.router import DirectRouter
from proxy.apps import Http1App, LoopThread
from proxy.conftest import metric_sum, parse_metrics

A_ID = "a.bench.serviceaccount.identity.meshctl.cluster.local"
B_ID = "b.bench.serviceaccount.identity.meshctl.cluster.local"


class IdentityService:
    """``meshctl identity serve`` as a subprocess (killable)."""

    def __init__(self, workdir, *, leaf_lifetime: str) -> None:
        self.registry = str(workdir / "tokens.json")
        if not os.path.exists(self.registry):
            (workdir / "tokens.json").write_text('{"tokens": []}')
        env = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshctl", "identity", "serve", "--listen", "127.0.0.1:0",
             "--trust-anchors-file", str(workdir / "ca.crt"), "--issuer-certificate-file", str(workdir / "issuer.crt"),
             "--issuer-key-file", str(workdir / "issuer.key"), "--token-registry", self.registry,
             "--leaf-lifetime", leaf_lifetime, "--clock-skew-allowance", "0s"],
            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stderr.close()


class StaticOutbound(DirectRouter):
    """A's outbound router: every request goes to one endpoint, with the identity it must prove."""

    remembers_endpoints = True  # the same endpoint whatever the request

    def __init__(self, endpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def select(self, target):
        return self.endpoint


def proxy_config(workdir, name: str, identity: str, svc_port: int, token: str, **extra):
    from meshctl_proxy import config
    (workdir / f"token-{name}").write_text(token)
    env = {
        "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
        "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_LOG_LEVEL": "warn",
        "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS": (workdir / "ca.crt").read_text(),
        "MESHCTL_PROXY_IDENTITY_SVC_ADDR": f"127.0.0.1:{svc_port}",
        "MESHCTL_PROXY_IDENTITY_SVC_NAME": SVC_NAME,
        "MESHCTL_PROXY_IDENTITY_TOKEN_FILE": str(workdir / f"token-{name}"),
        "MESHCTL_PROXY_IDENTITY_LOCAL_NAME": identity,
        "MESHCTL_PROXY_IDENTITY_DIR": str(workdir / f"identity-{name}"),
        "MESHCTL_PROXY_IDENTITY_MIN_REFRESH": "500ms",
        "MESHCTL_PROXY_POD_NAMESPACE": "bench", "MESHCTL_PROXY_POD_NAME": name,
        **extra,
    }
    return config.load(env)


async def start_proxy(cfg, *, outbound=None):
    """What meshctl_proxy.transport.server.serve does, with an optional outbound router."""
    from meshctl_proxy.model import Endpoint
    from meshctl_proxy.identity.mesh import Mesh
    from meshctl_proxy.transport.server import Proxy

    mesh = Mesh.from_config(cfg)
    router = StaticOutbound(Endpoint(*outbound)) if outbound else None
    proxy = Proxy(cfg, outbound_router=router, **mesh.seams())
    await proxy.start()
    mesh.attach(proxy)
    proxy.mesh = mesh
    return proxy


async def stop_proxy(proxy):
    proxy.begin_shutdown()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proxy.stopped.wait(), 5)
    for task in list(proxy.tasks):
        task.cancel()


class Pair:
    """App <- proxy B (inbound) <- mTLS <- proxy A (outbound) <- test client."""

    def __init__(self, lt: LoopThread, workdir, svc: IdentityService, *, b_env=None, b_identity_expected=B_ID):
        self.lt = lt
        self.app = lt.run(Http1App().start())
        ta = tokens.add_token(svc.registry, namespace="bench", service_account="a")
        tb = tokens.add_token(svc.registry, namespace="bench", service_account="b")
        self.b = lt.run(start_proxy(proxy_config(workdir, "b", B_ID, svc.port, tb, **(b_env or {}))))
        b_inbound = self.b.addresses["inbound"]
        self.a = lt.run(start_proxy(proxy_config(workdir, "a", A_ID, svc.port, ta),
                                    outbound=(b_inbound[0], b_inbound[1], b_identity_expected)))
        lt.run(_both_ready(self.a, self.b), timeout=20)

    def url(self, path="/") -> str:
        host, port = self.a.addresses["outbound"]
        return f"http://{host}:{port}{path}"

    def get(self, path="/", headers=None, *, timeout=5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url(path), headers={"Host": f"127.0.0.1:{self.app.port}", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics(self, proxy) -> dict:
        return parse_metrics(self.lt.run(_render(proxy)).decode())

    def close(self) -> None:
        for p in (self.a, self.b):
            self.lt.run(stop_proxy(p), timeout=15)
        self.lt.run(self.app.stop())


async def _both_ready(*proxies):
    await asyncio.wait_for(asyncio.gather(*(p.mesh.identity.wait_ready() for p in proxies)), 15)


async def _render(proxy):
    return proxy.metrics.render()


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def workdir(tmp_path):
    assert run_cli("identity", "create", "--out-dir", str(tmp_path)).returncode == 0
    return tmp_path


@pytest.fixture
def service(workdir):
    svc = IdentityService(workdir, leaf_lifetime="24h")
    yield svc
    svc.kill()


def test_meshed_request_is_mtls_and_both_sides_name_the_peer(loop, workdir, service):
    pair = Pair(loop, workdir, service)
    try:
        status, body = pair.get("/hello", headers={"meshctl-client-id": "spoofed.example"})
        assert status == 200, body
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert seen["meshctl-client-id"] == A_ID  # the verified peer, never what the client claimed
        a, b = pair.metrics(pair.a), pair.metrics(pair.b)
        assert metric_sum(a, "tcp_open_total", direction="outbound", peer="dst", tls="true", server_id=B_ID) == 1
        # Outbound request series are labelled by the mTLS hop, as Linkerd's are (not by the app's
        # plaintext connection to its own proxy).
        assert metric_sum(a, "request_total", direction="outbound", tls="true", server_id=B_ID) == 1
        assert metric_sum(a, "response_total", direction="outbound", tls="true", server_id=B_ID,
                          classification="success", status_code="200") == 1
        assert metric_sum(a, "request_total", direction="outbound", tls="no_identity") == 0
        assert metric_sum(b, "request_total", direction="inbound", tls="true", client_id=A_ID) == 1
        assert metric_sum(b, "tcp_open_total", direction="inbound", peer="src", tls="true", client_id=A_ID) == 1
        assert metric_sum(b, "request_total", direction="inbound", tls="no_identity") == 0
        assert metric_sum(a, "tls_handshakes_total", direction="outbound") == 1
        # pooled: more requests, no more handshakes; the forged header never survives (the HTTP/1
        # fast path on reused connections included)
        for _ in range(20):
            status, body = pair.get("/again", headers={"meshctl-client-id": "spoofed.example"})
            assert status == 200
            assert dict((k.lower(), v) for k, v in json.loads(body)["headers"])["meshctl-client-id"] == A_ID
        assert metric_sum(pair.metrics(pair.a), "tls_handshakes_total", direction="outbound") == 1
        assert metric_sum(pair.metrics(pair.b), "request_total", direction="inbound", tls="true", client_id=A_ID) == 21
        # `meshctl identity show` reads a running proxy's certificate from its admin port
        host, port = pair.b.addresses["admin"]
        shown = run_cli("identity", "show", "--admin", f"{host}:{port}")
        assert shown.returncode == 0, shown.stderr
        assert f"identity:     {B_ID}" in shown.stdout and "intermediate 1:" in shown.stdout
    finally:
        pair.close()


def test_server_with_another_identity_is_refused(loop, workdir, service):
    # A expects c but reaches b: b does not take TLS for a name not its own (SNI marker), and were a
    # server to answer anyway, A's SAN check refuses it (test_proxy_tls.py covers that part).
    pair = Pair(loop, workdir, service, b_identity_expected="c.bench.serviceaccount.identity.meshctl.cluster.local")
    try:
        status, body = pair.get("/x")
        assert status == 502 and body.startswith(b"connect to 127.0.0.1:")
        assert pair.app.requests == []
        assert metric_sum(pair.metrics(pair.a), "tls_handshake_failures_total", direction="outbound") == 1
    finally:
        pair.close()


def test_plaintext_client_to_an_all_authenticated_pod_is_refused(loop, workdir, service):
    opaque = socket.socket()
    opaque.bind(("127.0.0.1", 0))
    opaque.listen()
    opaque_port = opaque.getsockname()[1]
    pair = Pair(loop, workdir, service, b_env={"MESHCTL_PROXY_DEFAULT_INBOUND_POLICY": "all-authenticated",
                                                 "MESHCTL_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION": str(opaque_port)})
    try:
        host, port = pair.b.addresses["inbound"]
        # plaintext HTTP straight to B's inbound: 403, and the app never hears of it
        req = urllib.request.Request(f"http://{host}:{port}/direct", headers={"Host": f"127.0.0.1:{pair.app.port}"})
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(req, timeout=5)
        assert denied.value.code == 403 and "all-authenticated" in denied.value.read().decode()
        assert pair.app.requests == [] or all(r["target"] != "/direct" for r in pair.app.requests)
        # the same pod through the mesh: allowed
        assert pair.get("/through-mesh")[0] == 200
        b = pair.metrics(pair.b)
        assert metric_sum(b, "inbound_http_authz_deny_total") == 1
        assert metric_sum(b, "inbound_http_authz_allow_total") == 1
    finally:
        pair.close()
        opaque.close()


def test_rotations_under_steady_load_fail_no_request(loop, workdir):
    svc = IdentityService(workdir, leaf_lifetime="3s")
    pair = Pair(loop, workdir, svc)
    try:
        first = (pair.a.mesh.identity.current(), pair.b.mesh.identity.current())
        results, deadline, n = [], time.monotonic() + 25, 0
        # Steady and bounded: one request at a time, paced, for at most 25 s and 8000 requests, until
        # both proxies have rotated three times; A's idle pool is flushed every 50 requests so new
        # handshakes happen with whatever certificates are current.
        while time.monotonic() < deadline and n < 8000:
            time.sleep(0.002)
            results.append(pair.get(f"/load/{n}")[0])
            n += 1
            if n % 50 == 0:
                loop.loop.call_soon_threadsafe(pair.a.upstreams["outbound"].h1.close)
            if min(pair.a.mesh.identity.refreshes, pair.b.mesh.identity.refreshes) >= 4 and n >= 200:
                break
        assert min(pair.a.mesh.identity.refreshes, pair.b.mesh.identity.refreshes) >= 4, "fewer than 3 rotations"
        assert time.time() > max(first[0].not_after, first[1].not_after)  # traffic outlived the first certificates
        assert results.count(200) == len(results) and len(results) >= 200, [s for s in results if s != 200][:5]
        assert metric_sum(pair.metrics(pair.a), "tls_handshakes_total", direction="outbound") >= 3
    finally:
        pair.close()
        svc.kill()


def test_identity_service_killed_traffic_continues_until_expiry_then_fails_closed(loop, workdir):
    svc = IdentityService(workdir, leaf_lifetime="6s")
    pair = Pair(loop, workdir, svc)
    try:
        assert pair.get("/before")[0] == 200
        svc.kill()
        expiry = min(pair.a.mesh.identity.expiry, pair.b.mesh.identity.expiry)
        ok = 0
        # A margin before expiry: a request in flight when the certificate lapses may fail, rightly.
        while time.time() < expiry - 1.5:
            assert pair.get("/during")[0] == 200
            ok += 1
            time.sleep(0.05)
        assert ok > 0
        time.sleep(max(0.0, expiry - time.time()))
        # Fail closed: within a few seconds of expiry (timers run late on a loaded machine) every
        # request fails, and keeps failing.
        statuses, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline and statuses[-3:] != [502] * 3 and statuses[-3:] != [503] * 3:
            statuses.append(pair.get("/after")[0])
            time.sleep(0.1)
        assert set(statuses[-3:]) <= {502, 503} and len(statuses) >= 3, statuses
        host, port = pair.a.addresses["admin"]
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=5)
        assert not_ready.value.code == 503
        served_after = [r for r in pair.app.requests if r["target"] == "/after"]
        assert len(served_after) == statuses.count(200)  # nothing reached the app once refused
    finally:
        pair.close()


def test_http2_between_meshed_proxies_is_mtls_with_the_client_named(loop, workdir, service):
    import httpx

    from proxy.apps import H2Server

    pair = Pair(loop, workdir, service)
    h2app = loop.run(H2Server().start())
    try:
        authority = f"127.0.0.1:{h2app.port}"
        with httpx.Client(http1=False, http2=True, timeout=10) as c:
            for i in range(3):
                r = c.post(pair.url(f"/echo?i={i}"), content=b"hi", headers={"Host": authority})
                assert r.status_code == 200 and r.http_version == "HTTP/2"
        b = pair.metrics(pair.b)
        assert metric_sum(b, "request_total", direction="inbound", authority=authority, tls="true", client_id=A_ID) == 3
        assert metric_sum(pair.metrics(pair.a), "response_total", direction="outbound", authority=authority,
                          tls="true", server_id=B_ID, status_code="200") == 3
        assert metric_sum(pair.metrics(pair.a), "tcp_open_total", direction="outbound", peer="dst", tls="true",
                          server_id=B_ID) >= 1
    finally:
        loop.run(h2app.stop())
        pair.close()
