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
from proxy.conftest import wait_for
from viz.conftest import Cli, send, tap_subscribers  # the `mesh` fixture is there too

def test_tap_prints_each_request_of_a_20_request_burst(mesh):
    cli = Cli(mesh, "viz", "tap", "deploy/product-gateway-api")
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=15), cli.stop()
        assert send(mesh, 20) == [200] * 20
        time.sleep(0.5)
    finally:
        code, out, err = cli.stop()
    assert code == 0 and err == "", err
    lines = out.splitlines()
    inbound_reqs = [ln for ln in lines if ln.startswith("req ") and " proxy=in " in ln]
    assert sorted(ln.split(":path=")[1] for ln in inbound_reqs) == sorted(f"/api/products/{1 + i % 5}"
                                                                          for i in range(20))
    assert len({ln.split()[1] for ln in inbound_reqs}) == 20  # twenty requests, twenty ids
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
        assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=15)
        send(mesh, 3)
        time.sleep(0.5)
    finally:
        code, out, err = cli.stop()
    assert code == 0, err
    reqs = [ln for ln in out.splitlines() if ln.startswith("req ")]
    assert len(reqs) == 3
    for ln in reqs:
        assert " proxy=out " in ln and f"dst={mesh.workload('product-api').proxy.inbound} " in ln
        assert "src_deploy=product-gateway-api src_pod=product-gateway-api-0 src_ns=shop" in ln
        assert "dst_deploy=product-api dst_pod=product-api-0 dst_ns=shop" in ln
        assert "server_id=product-api.shop.serviceaccount.identity.meshctl.cluster.local" in ln


def test_tap_json_carries_header_names_never_values(mesh):
    cli = Cli(mesh, "viz", "tap", "deploy/product-api", "-o", "json", "--path", "/api/products/3")
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1, timeout=15)
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
    assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1, timeout=15)
    send(mesh, 10)
    code, out, err = cli.stop(None)
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
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=15)
    send(mesh, 6, start=1)
    send(mesh, 2, start=1)  # products 1 and 2 twice each
    code, out, err = cli.stop(None)
    assert code == 0 and "Traceback" not in err, err
    last = out.strip().split("\n\n")[-1].splitlines()
    assert last[0].startswith("# meshctl viz top deploy/product-gateway-api at ")
    assert last[1].split() == ["Source", "Destination", "Method", "Path", "Count", "Best", "Worst", "Last",
                               "Success", "Rate"]
    rows = [ln.split() for ln in last[2:]]
    counts = [int(r[4]) for r in rows]
    assert counts == sorted(counts, reverse=True)
    inbound = {r[3]: r for r in rows if r[1] == "product-gateway-api-0"}
    assert inbound["/api/products/1"][4] == "3" and inbound["/api/products/5"][4] == "1"
    assert inbound["/api/products/1"][8] == "100.00%"
    price = [r for r in rows if r[1] == "price-api-0"]
    assert price and price[0][0] == "product-gateway-api-0" and price[0][3] == "/api/prices"


def restart_proxy(mesh: Mesh, name: str) -> None:
    """Stop a proxy of the demo and start it again as ``demo up`` did (recorded, so ``demo down`` stops it)."""
    from meshctl.demo import local

    ld = local.LocalDemo(mesh.state_dir)
    assert ld._load_record()
    proxy = next(p for p in ld.started if p.spec.name == f"{name}-proxy")
    local._stop_group(proxy)
    assert wait_for(lambda: not local.is_running(proxy))
    ld._spawn(proxy.spec)
    ready = f"http://{mesh.workload(name).proxy.admin}/ready"
    assert wait_for(lambda: _status(ready) == 200, timeout=30)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def test_top_says_when_a_proxy_restarts_and_goes_on(mesh):
    cli = Cli(mesh, "viz", "top", "deploy/product-api", "--refresh", "300ms")
    try:
        assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1, timeout=15)
        send(mesh, 2, start=1)
        time.sleep(0.5)
        restart_proxy(mesh, "product-api")
        assert wait_for(lambda: tap_subscribers(mesh, "product-api") == 1, timeout=15)
        send(mesh, 3, start=3)
        time.sleep(1.0)
    finally:
        code, out, err = cli.stop()
    assert code == 0 and "Traceback" not in err, err
    assert "deploy/product-api (product-api-0): the proxy ended the stream; retrying" in err
    assert "deploy/product-api (product-api-0): subscribed again" in err
    last = out.strip().split("\n\n")[-1]
    assert "/api/products/5" in last and "/api/products/1" in last  # before and after the restart


def test_a_subscriber_killed_mid_stream_leaves_traffic_untouched(mesh):
    cli = Cli(mesh, "viz", "tap", "deploy/product-gateway-api")
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 1, timeout=15), cli.stop()
    send(mesh, 3)
    cli.proc.kill()
    cli.stop()
    assert wait_for(lambda: tap_subscribers(mesh, "product-gateway-api") == 0, timeout=15)
    assert send(mesh, 5) == [200] * 5


def test_tap_errors_are_one_line(mesh, tmp_path):
    env = {"MESHCTL_DEMO_DIR": str(mesh.state_dir)}
    r = run_cli("viz", "tap", "deploy/nope", env=env)
    assert r.returncode == 1 and r.stderr.startswith("Error: no meshed deploy/nope in namespace shop")
    r = run_cli("viz", "tap", "au/web:80", env=env)
    assert r.returncode == 2 and "cannot tap authority" in r.stderr
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


def _pty_run(mesh: Mesh, keys: bytes | None, *args: str, sig=None) -> tuple[int, str, list]:
    """Run the command on a pseudo-terminal; press *keys* (or send *sig*) once its table is drawn."""
    import pty
    import select
    import termios

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(SRC), "MESHCTL_DEMO_DIR": str(mesh.state_dir), "COLUMNS": "200",
           "LINES": "40", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=ROOT, start_new_session=True)
    os.close(slave)
    screen = b""
    pressed = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                screen += data
            if not pressed and b"Success Rate" in screen:
                send(mesh, 2)
                time.sleep(1.0)
                if keys:
                    os.write(master, keys)
                else:
                    proc.send_signal(sig)
                pressed = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(10)
        attrs = termios.tcgetattr(master)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, screen.decode(errors="replace"), attrs


@pytest.mark.parametrize("keys, sig", [(b"q", None), (None, signal.SIGINT)])
def test_top_on_a_terminal_refreshes_and_quits_on_q_or_ctrl_c(mesh, keys, sig):
    import termios

    code, screen, attrs = _pty_run(mesh, keys, "viz", "top", "deploy/product-gateway-api", "--refresh", "200ms",
                                   sig=sig)
    assert code == 0, screen[-2000:]
    assert "Traceback" not in screen
    assert "(q to quit)" in screen and "/api/products/1" in screen
    assert "\x1b[?1049h" in screen and "\x1b[?1049l" in screen  # the alternate screen, entered and left
    assert attrs[3] & termios.ECHO and attrs[3] & termios.ICANON  # the terminal is given back as it was
