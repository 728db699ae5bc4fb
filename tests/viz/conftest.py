"""A real Prometheus (Debian's binary) scraping the real proxies of the demo's shop, on loopback."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def free_prefix() -> str:
    """A loopback /24 nobody listens in (other runs of the demo, other test sessions), from the pid."""
    import os
    import socket

    pid = os.getpid()
    for i in range(50):
        prefix = f"127.{200 + (pid + i) % 50}.{(pid // 50 + i) % 250 + 1}"
        try:
            for host, port in ((f"{prefix}.1", 8086), (f"{prefix}.2", 4191), (f"{prefix}.4", 8080)):
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return prefix
    raise RuntimeError("no free loopback /24 for the shop")


@dataclasses.dataclass(frozen=True, slots=True)
class Shop:
    run: object  # meshctl.demo.DemoRun: its LocalDemo runs the Prometheus, scraping every second
    dir: Path  # the local mesh's state directory (mesh.json): `viz --demo-dir`

    @property
    def prometheus_url(self) -> str:
        return self.run.prometheus_url


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    """The three APIs meshed (mTLS, profiles, retries), and Debian's Prometheus scraping every proxy
    each second (``meshctl.viz.localprom``, started by the local mesh as ``meshctl demo`` starts it).

    price-api fails 30% of its requests, so retries and failures both show.
    """
    from meshctl import demo

    workdir = tmp_path_factory.mktemp("shop")
    # The shop's processes run this checkout's code (not the installed package's).
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(SRC)
    plan = demo.Plan(prefix=free_prefix(), price_failure_rate=0.3)
    try:
        with demo.DemoRun(plan, workdir) as run:
            run.wait_scraped()
            yield Shop(run=run, dir=workdir)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@dataclasses.dataclass
class Load:
    """What a load generator sent to the gateway and got back: (completion time, status) per request."""

    results: list = dataclasses.field(default_factory=list)
    stop: bool = False

    def between(self, start: float, end: float) -> list:
        return [status for t, status in self.results if start <= t <= end]


def drive(shop: Shop, load: Load, *, rps: float, seconds: float) -> None:
    """Send GET /api/products/N to the gateway's proxy (as an ingress would), paced, bounded in count and time."""
    import time

    import httpx

    gateway = shop.run.plan.workload("product-gateway-api")
    start = time.monotonic()
    total = int(rps * seconds)
    with httpx.Client(base_url=f"http://{gateway.inbound}", headers={"Host": gateway.authority}, timeout=10) as c:
        for i in range(total):
            if load.stop or time.monotonic() - start > seconds + 5:
                break
            delay = start + i / rps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                status = c.get(f"/api/products/{1 + i % 5}").status_code
            except httpx.HTTPError:
                status = 0
            load.results.append((time.time(), status))


# --- the local mesh of `meshctl demo up`, whose real proxies tap tests subscribe to -------------

# Loopback /24s a module may use, tried in turn: another run of the suite (another checkout)
# may hold one; `demo up` refuses an address in use at once.
PREFIXES = ("127.0.23", "127.0.25", "127.0.26", "127.0.27")


class Mesh:
    """A ``meshctl demo up`` local mesh: its state directory, state file and plan."""

    def __init__(self, d: Path, prefix: str) -> None:
        from meshctl import demo
        from meshctl.demo import state

        self.state_dir = d
        self.state = state.load(d)
        self.plan = demo.Plan(prefix=prefix)

    def workload(self, name: str):
        return self.state.workload(name)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A ``meshctl demo up`` local mesh on a free loopback /24, for this module (mTLS, identity on)."""
    from conftest import run_cli

    d = tmp_path_factory.mktemp("tapmesh") / "demo"
    for prefix in PREFIXES:
        r = run_cli("demo", "up", "--dir", str(d), "--address-prefix", prefix, timeout=180)
        if r.returncode == 0 or "already in use" not in r.stderr:
            break
    try:
        assert r.returncode == 0, r.stderr
        yield Mesh(d, prefix)
    finally:
        down = run_cli("demo", "down", "--dir", str(d), timeout=60)
        assert down.returncode == 0, down.stderr


def send(mesh: Mesh, n: int, *, start: int = 1) -> list[int]:
    """Requests to the gateway as the demo's ingress sends them: to the pod, with the Service's authority."""
    gateway = mesh.plan.workload("product-gateway-api")
    with httpx.Client(base_url=mesh.state.gateway_url, headers={"Host": gateway.authority}, timeout=10) as c:
        # The shop sells five products: ids cycle through 1..5.
        return [c.get(f"/api/products/{1 + (start - 1 + i) % 5}").status_code for i in range(n)]


def tap_subscribers(mesh: Mesh, name: str) -> float:
    from proxy.conftest import metric_sum, parse_metrics

    admin = mesh.workload(name).proxy.admin
    return metric_sum(parse_metrics(httpx.get(f"http://{admin}/metrics", timeout=5).text), "tap_subscribers")




class Cli:
    """``python -m meshctl ARGS`` running in the background, its output collected; against the local
    mesh (``$MESHCTL_DEMO_DIR``) unless *demo* is False (a cluster: ``--kubeconfig`` among *args*)."""

    def __init__(self, mesh: Mesh, *args: str, demo: bool = True) -> None:
        import subprocess
        import sys

        from conftest import ROOT, SRC

        env = {**os.environ, "PYTHONPATH": str(SRC), "NO_COLOR": "1", "COLUMNS": "250"}
        env.pop("MESHCTL_DEMO_DIR", None)
        if demo:
            env["MESHCTL_DEMO_DIR"] = str(mesh.state_dir)
        self.proc = subprocess.Popen([sys.executable, "-m", "meshctl", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)

    def stop(self, sig: signal.Signals | None = signal.SIGINT, timeout: float = 30) -> tuple[int, str, str]:
        """Send *sig* (None: let it end by itself, --duration) and collect the exit code and output."""
        import subprocess

        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out, err


# --- the tap server of `viz install`, as its Deployment runs it, on loopback ---------------------------

class TapServerProcess:
    """``meshctl viz tap-server`` with the arguments and certificate ``viz install`` rendered, served
    to the fake API server: the tap Service's port 443 is this process's loopback port."""

    def __init__(self, kube, objs: list[dict], tmp: Path, *, identity_addr: str, token: str) -> None:
        import base64
        import socket

        ns = next(o for o in objs if o["kind"] == "Namespace")["metadata"]["name"]
        secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "tap-k8s-tls")
        for key in ("tls.crt", "tls.key"):
            (tmp / f"tap-{key}").write_bytes(base64.b64decode(secret["data"][key]))
        (tmp / "tap-token").write_text(token)
        deploy = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "tap")
        command = deploy["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[0] == "meshctl" and command[2:4] == ["viz", "tap-server"], command
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # The rendered command, with what a pod's volumes and network provide made local.
        args = [a for a in command[1:] if not a.startswith(("--tls-cert-file=", "--tls-key-file="))]
        self.args = [sys.executable, "-m", "meshctl", "--kubeconfig", str(kube.kubeconfig(tmp / "tap-server.kubeconfig")),
                     *args, "--listen", f"127.0.0.1:{self.port}", "--tls-cert-file", str(tmp / "tap-tls.crt"),
                     "--tls-key-file", str(tmp / "tap-tls.key"), "--identity-addr", identity_addr,
                     "--identity-token-file", str(tmp / "tap-token"), "--identity-dir", str(tmp / "tap-identity")]
        self.log = tmp / "tap-server.log"
        self.proc = None
        kube.service_endpoints[(ns, "tap", 443)] = ("127.0.0.1", self.port)

    def start(self, *, ready: bool = True) -> None:
        """Start; wait until it answers (and, with *ready*, holds its tap certificate)."""
        import subprocess

        from conftest import ROOT, SRC
        from proxy.conftest import wait_for

        env = {**os.environ, "PYTHONPATH": str(SRC)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                         cwd=ROOT, start_new_session=True)
        ok = wait_for(lambda: self.ready() in ((200,) if ready else (200, 503)), timeout=30, interval=0.2)
        assert ok, self.log.read_text()

    def ready(self) -> int | None:
        """The status of GET /ready (no client certificate: the kubelet's probe), None when not listening."""
        import ssl
        import urllib.error
        import urllib.request

        assert self.proc.poll() is None, self.log.read_text()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/ready", context=ctx, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def stop(self) -> None:
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
