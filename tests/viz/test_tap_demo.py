"""``meshctl viz tap|top|profile --tap`` against the real proxies of the local demo (mTLS, identity on).

The demo's processes (``meshctl.demo.DemoRun``: identity and destination
services, the three sample APIs and their proxies) run on 127.0.23.0/24; the
state file (contract B) names them and the tap client's certificate, issued
for the tap identity by the demo's issuer.  The commands run as a user runs
them, as subprocesses, and traffic goes to the gateway as the demo's ingress
sends it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from conftest import ROOT, SRC, run_cli

PREFIX = "127.0.23"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    from meshctl import demo
    from meshctl.demo import state
    from meshctl.identity import certs
    from meshctl_proxy import config

    workdir = tmp_path_factory.mktemp("tapmesh")
    plan = demo.Plan(prefix=PREFIX, price_failure_rate=0.0)
    # The demo's processes inherit our environment: make them run this checkout's proxy.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(SRC))
        with demo.DemoRun(plan, workdir) as run:
            issuer = certs.load_issuer(cert_pem=(workdir / "issuer.crt").read_text(),
                                       key_pem=(workdir / "issuer.key").read_text(),
                                       trust_anchors_pem=(workdir / "ca.crt").read_text())
            key = certs.new_private_key()
            leaf = certs.issue_leaf(issuer.key_pair, public_key=key.public_key(), dns_name=config.TAP_SVC_NAME)
            (workdir / "tap.crt").write_text(certs.cert_to_pem(leaf) + (workdir / "issuer.crt").read_text())
            (workdir / "tap.key").write_text(certs.key_to_pem(key))
            workloads = tuple(state.LocalWorkload(
                namespace=demo.NAMESPACE, kind="deployment", name=w.name, pod=f"{w.name}-0", service=w.service,
                identity=w.identity, app=f"{w.host}:{w.port}",
                proxy=state.ProxyAddrs(admin=w.admin, control=f"{w.host}:4190", inbound=w.inbound, outbound=w.outbound))
                for w in plan.workloads)
            gateway = plan.workload("product-gateway-api")
            state.save(state.LocalMesh(
                namespace=demo.NAMESPACE, prometheus_url="http://127.0.0.1:9", dashboard_url=None,
                gateway_url=f"http://{gateway.inbound}",
                tap=state.TapCredentials(config.TAP_SVC_NAME, workdir / "tap.crt", workdir / "tap.key", workdir / "ca.crt"),
                workloads=workloads), workdir)
            run.state_dir = workdir
            yield run


def send(run, n: int, *, start: int = 1) -> list[int]:
    gateway = run.plan.workload("product-gateway-api")
    with httpx.Client(base_url=f"http://{gateway.inbound}", headers={"Host": gateway.authority}, timeout=10) as c:
        return [c.get(f"/api/products/{start + i}").status_code for i in range(n)]


def tap_subscribers(run, name: str) -> float:
    from proxy.conftest import metric_sum, parse_metrics

    w = run.plan.workload(name)
    return metric_sum(parse_metrics(httpx.get(f"http://{w.admin}/metrics", timeout=5).text), "tap_subscribers")


class Cli:
    """``python -m meshctl ARGS`` running in the background, its output collected."""

    def __init__(self, run, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1", "COLUMNS": "250",
               "MESHCTL_DEMO_DIR": str(run.state_dir)}
        self.proc = subprocess.Popen([sys.executable, "-m", "meshctl", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)

    def wait(self, timeout: float = 30) -> tuple[int, str, str]:
        """Until the command ends by itself (--duration, --tap-duration)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err

    def stop(self, sig=signal.SIGINT, timeout: float = 15) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_tap_prints_each_request_of_a_20_request_burst(mesh):
    cli = Cli(mesh, "viz", "tap", "deploy/product-gateway-api")
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1), cli.stop()
        assert send(mesh, 20, start=101) == [200] * 20
        time.sleep(0.5)
    finally:
        code, out, err = cli.stop()
    assert code == 0 and err == "", err
    lines = out.splitlines()
    inbound_reqs = [ln for ln in lines if ln.startswith("req ") and " proxy=in " in ln]
    assert sorted(ln.split(":path=")[1] for ln in inbound_reqs) == sorted(f"/api/products/{101 + i}"
                                                                          for i in range(20))
    first = inbound_reqs[0]
    assert " :method=GET " in first and " :authority=product-gateway-api-svc.shop.svc.cluster.local:5000 " in first
    # Each request: its rsp and end under the same id, with status, latency, duration and length.
    for req in inbound_reqs:
        rid = req.split()[1]
        rsp = [ln for ln in lines if ln.startswith(f"rsp {rid} ")]
        end = [ln for ln in lines if ln.startswith(f"end {rid} ")]
        assert len(rsp) == 1 and " :status=200 latency=" in rsp[0], (req, rsp)
        assert len(end) == 1 and " duration=" in end[0] and "response-length=" in end[0], (req, end)
    # The gateway's own calls to the product and price APIs went out over mTLS.
    outbound = [ln for ln in lines if ln.startswith("req ") and " proxy=out " in ln]
    assert len(outbound) == 40 and all(" tls=true " in ln for ln in outbound)
    assert {ln.split(":authority=")[1].split()[0] for ln in outbound} == {
        "product-api-svc.shop.svc.cluster.local:9090", "price-api-svc.shop.svc.cluster.local:8080"}


def test_tap_to_a_deployment_wide_shows_only_those_requests_with_resources(mesh):
    cli = Cli(mesh, "viz", "tap", "deploy/product-gateway-api", "--to", "deploy/product-api", "-o", "wide")
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1)
        send(mesh, 3, start=201)
        time.sleep(0.5)
    finally:
        code, out, err = cli.stop()
    assert code == 0, err
    reqs = [ln for ln in out.splitlines() if ln.startswith("req ")]
    assert len(reqs) == 3
    for ln in reqs:
        assert " proxy=out " in ln and f"dst={PREFIX}.3:4143 " in ln
        assert "src_deploy=product-gateway-api src_pod=product-gateway-api-0 src_ns=shop" in ln
        assert "dst_deploy=product-api dst_pod=product-api-0 dst_ns=shop" in ln
        assert "server_id=product-api.shop.serviceaccount.identity.meshctl.cluster.local" in ln


def test_tap_json_carries_header_names_never_values(mesh):
    cli = Cli(mesh, "viz", "tap", "deploy/product-api", "-o", "json", "--path", "/api/products/3")
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1)
        send(mesh, 5, start=1)
        time.sleep(0.5)
    finally:
        code, out, err = cli.stop()
    assert code == 0, err
    docs = [json.loads(ln) for ln in out.splitlines()]
    reqs = [d for d in docs if d["event"] == "req"]
    assert len(reqs) == 1 and reqs[0]["path"] == "/api/products/3" and reqs[0]["direction"] == "inbound"
    assert reqs[0]["client_id"] == "product-gateway-api.shop.serviceaccount.identity.meshctl.cluster.local"
    assert "host" in reqs[0]["header_names"] or "user-agent" in reqs[0]["header_names"]
    assert reqs[0]["proxy"] == {"namespace": "shop", "pod": "product-api-0", "workload": "deploy/product-api"}
    assert reqs[0]["src_resource"] == {"namespace": "shop", "pod": "product-gateway-api-0",
                                       "deploy": "product-gateway-api"}
    assert [d["event"] for d in docs] == ["req", "rsp", "end"]


def test_profile_from_tap_has_parametrised_routes_and_validates(mesh, tmp_path):
    cli = Cli(mesh, "viz", "profile", "--tap", "deploy/product-api", "--tap-duration", "4s", "product-api-svc",
              "-n", "shop")
    assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1)
    send(mesh, 10)
    code, out, err = cli.wait()
    assert code == 0, err
    profile = yaml.safe_load(out)
    assert profile["metadata"] == {"name": "product-api-svc.shop.svc.cluster.local", "namespace": "shop"}
    assert profile["spec"]["routes"] == [{"name": "GET /api/products/{id}",
                                          "condition": {"method": "GET", "pathRegex": "/api/products/[^/]*"}}]
    (tmp_path / "p.yaml").write_text(out)
    check = run_cli("profile", "--validate", str(tmp_path / "p.yaml"))
    assert check.returncode == 0, check.stderr


def test_top_piped_prints_plain_tables_sorted_by_count(mesh):
    cli = Cli(mesh, "viz", "top", "deploy/product-gateway-api", "--refresh", "500ms", "--duration", "5s")
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1)
    send(mesh, 6, start=1)
    send(mesh, 2, start=1)  # products 1 and 2 twice each
    code, out, err = cli.wait()
    assert code == 0 and "Traceback" not in err, err
    last = out.strip().split("\n\n")[-1].splitlines()
    assert last[0].startswith("# meshctl viz top deploy/product-gateway-api at ")
    assert last[1].split() == ["Source", "Destination", "Method", "Path", "Count", "Best", "Worst", "Last",
                               "Success", "Rate"]
    rows = [ln.split() for ln in last[2:]]
    counts = [int(r[4]) for r in rows]
    assert counts == sorted(counts, reverse=True)
    inbound = {r[3]: r for r in rows if r[1] == "product-gateway-api-0"}
    assert inbound["/api/products/1"][4] == "2" and inbound["/api/products/6"][4] == "1"
    assert inbound["/api/products/1"][8] == "100.00%"
    price = [r for r in rows if r[1] == "price-api-0"]
    assert price and price[0][0] == "product-gateway-api-0" and price[0][3] == "/api/prices"


def test_top_says_when_a_proxy_restarts_and_goes_on(mesh):
    from meshctl import demo

    w = mesh.plan.workload("product-api")
    cli = Cli(mesh, "viz", "top", "deploy/product-api", "--refresh", "300ms")
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1)
        send(mesh, 2, start=1)
        name, proc = next((n, p) for n, p in mesh.procs if n == "product-api-proxy")
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        mesh.procs.remove((name, proc))
        d = mesh.dir
        env = demo.proxy_env(mesh.plan, w, trust_anchors_pem=(d / "ca.crt").read_text(),
                             token_file=str(d / f"{w.name}.token"), identity_dir=str(d / w.name))
        mesh._spawn(name, [sys.executable, "-m", "meshctl_proxy"], env)
        mesh.wait_ready()
        assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1, timeout=15)
        send(mesh, 3, start=7)
        time.sleep(1.0)
    finally:
        code, out, err = cli.stop()
    assert code == 0 and "Traceback" not in err, err
    assert "deploy/product-api (product-api-0): the proxy ended the stream; retrying" in err
    assert "deploy/product-api (product-api-0): subscribed again" in err
    last = out.strip().split("\n\n")[-1]
    assert "/api/products/7" in last and "/api/products/1" in last  # before and after the restart


def test_a_subscriber_killed_mid_stream_leaves_traffic_untouched(mesh):
    cli = Cli(mesh, "viz", "tap", "deploy/product-gateway-api")
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1), cli.stop()
    send(mesh, 3)
    cli.proc.kill()
    cli.stop()
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 0)
    assert send(mesh, 5) == [200] * 5


def test_tap_errors_are_one_line(mesh, tmp_path):
    env = {"MESHCTL_DEMO_DIR": str(mesh.state_dir)}
    r = run_cli("viz", "tap", "deploy/nope", env=env)
    assert r.returncode == 1 and r.stderr.startswith("Error: no meshed deploy/nope in namespace shop")
    r = run_cli("viz", "tap", "svc/web", env=env)
    assert r.returncode == 2 and "unknown resource type 'svc'" in r.stderr
    r = run_cli("viz", "tap", "deploy/product-api", "--max-rps", "0", env=env)
    assert r.returncode == 2 and "--max-rps" in r.stderr
    r = run_cli("viz", "tap", "deploy/product-api", env={"MESHCTL_DEMO_DIR": str(tmp_path)})
    assert r.returncode == 1 and "no local mesh" in r.stderr and len(r.stderr.splitlines()) == 1
    # A tap certificate the proxies do not accept: refused, said once, exit 1.
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = json.loads((mesh.state_dir / "mesh.json").read_text())
    doc["tap"]["cert"], doc["tap"]["key"] = str(mesh.state_dir / "product-api" / "missing.crt"), doc["tap"]["key"]
    (bad / "mesh.json").write_text(json.dumps(doc))
    r = run_cli("viz", "tap", "deploy/product-api", env={"MESHCTL_DEMO_DIR": str(bad)})
    assert r.returncode == 1 and "tap credentials" in r.stderr and "Traceback" not in r.stderr
