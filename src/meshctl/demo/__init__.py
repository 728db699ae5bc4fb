"""``meshctl demo``: the three-API shop, meshed, on one machine without a cluster.

What runs, each a real process on its own loopback address (a "pod"):

- control plane on ``<prefix>.1``: the destination service (``meshctl destination
  serve`` over a local registry) and the identity service (``meshctl identity
  serve`` with a fresh trust anchor and issuer, and a local token registry);
- ``product-gateway-api`` on ``<prefix>.2``, ``product-api`` on ``<prefix>.3``,
  ``price-api`` on ``<prefix>.4``: each the sample app (``samples/apps/shop.py``)
  beside a ``meshctl-proxy`` that gets its certificate from the identity service,
  its endpoints and ServiceProfiles from the destination service, and speaks mTLS
  to the other proxies.

Without iptables there is no transparent redirection, so the demo does
explicitly what the nat rules do in a pod: the gateway sends its calls to its
proxy's outbound listener (keeping the service Host), and the registry's
endpoints are the proxies' inbound listeners.  Service ports equal container
ports here because the inbound proxy learns the port from the Host header
instead of SO_ORIGINAL_DST (docs/demo.md).

The plan (addresses, environment, registry) is pure data built by functions
here; :class:`DemoRun` owns the processes and always stops them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshctl.errors import MeshctlError, UsageError

NAMESPACE = "shop"
MESH_NAMESPACE = "meshctl"
TRUST_DOMAIN = "cluster.local"
CLUSTER_DOMAIN = "cluster.local"
SAMPLES = Path(__file__).resolve().parents[3] / "samples"


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    name: str  # Deployment and ServiceAccount name
    service: str
    port: int  # container port = Service port in the demo
    app: str  # samples/apps/shop.py role
    spec: str  # samples/swagger file
    host: str  # the pod's loopback address

    @property
    def authority(self) -> str:
        return f"{self.service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}:{self.port}"

    @property
    def identity(self) -> str:
        return f"{self.name}.{NAMESPACE}.serviceaccount.identity.{MESH_NAMESPACE}.{TRUST_DOMAIN}"

    @property
    def inbound(self) -> str:
        return f"{self.host}:4143"

    @property
    def outbound(self) -> str:
        return f"{self.host}:4140"

    @property
    def admin(self) -> str:
        return f"{self.host}:4191"


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    prefix: str = "127.0.10"
    price_failure_rate: float = 0.1
    price_latency_ms: float = 0.0

    @property
    def control_host(self) -> str:
        return f"{self.prefix}.1"

    @property
    def destination_addr(self) -> str:
        return f"{self.control_host}:8086"

    @property
    def identity_addr(self) -> str:
        return f"{self.control_host}:8080"

    @property
    def workloads(self) -> tuple[Workload, ...]:
        return (
            Workload("product-gateway-api", "product-gateway-api-svc", 5000, "gateway", "product-gateway-api.json", f"{self.prefix}.2"),
            Workload("product-api", "product-api-svc", 9090, "product", "product-api.json", f"{self.prefix}.3"),
            Workload("price-api", "price-api-svc", 8080, "price", "price-api.json", f"{self.prefix}.4"),
        )

    def workload(self, name: str) -> Workload:
        return next(w for w in self.workloads if w.name == name)


def validate_prefix(prefix: str) -> str:
    parts = prefix.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise UsageError(f"--address-prefix: expected three octets inside 127.0.0.0/8 (e.g. 127.0.10), got {prefix!r}")
    return prefix


def check_samples(samples: Path = SAMPLES) -> Path:
    """The demo runs the sample apps and specs of a source checkout; say so when they are not there."""
    if not (samples / "apps" / "shop.py").is_file() or not (samples / "swagger").is_dir():
        raise MeshctlError(f"meshctl demo needs the project's samples/ directory (not found at {samples}): "
                           "run it from a source checkout (pip install -e .)")
    return samples


def profiles(plan: Plan, samples: Path = SAMPLES) -> list[dict]:
    """ServiceProfiles of the three APIs, generated from their specs as ``meshctl profile --open-api`` does."""
    from meshctl.profiles.openapi import from_openapi, load_spec

    out = []
    for w in plan.workloads:
        path = samples / "swagger" / w.spec
        doc = load_spec(path.read_bytes(), source=str(path))
        out.append(from_openapi(doc, name=f"{w.service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}", namespace=NAMESPACE,
                                source=str(path)).to_dict())
    return out


def registry(plan: Plan, service_profiles: list[dict]) -> dict:
    """The destination service's local registry: each Service's endpoint is its pod's proxy (docs/destination.md)."""
    return {
        "clusterDomain": CLUSTER_DOMAIN,
        "services": [
            {"name": w.service, "namespace": NAMESPACE, "ports": [{"port": w.port, "endpoints": [
                {"address": w.inbound, "labels": {"pod": f"{w.name}-0", "deployment": w.name}, "identity": w.identity},
            ]}]}
            for w in plan.workloads
        ],
        "profiles": service_profiles,
    }


def proxy_env(plan: Plan, w: Workload, *, trust_anchors_pem: str, token_file: str, identity_dir: str) -> dict[str, str]:
    """The ``MESHCTL_PROXY_*`` environment of one pod's proxy: what ``inject --manual`` renders, with loopback addresses."""
    return {
        "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": w.inbound,
        "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": w.outbound,
        "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": w.admin,
        "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": f"{w.host}:4190",
        "MESHCTL_PROXY_INBOUND_FORWARD_HOST": w.host,
        "MESHCTL_PROXY_INBOUND_PORTS": str(w.port),
        "MESHCTL_PROXY_DESTINATION_SVC_ADDR": plan.destination_addr,
        "MESHCTL_PROXY_IDENTITY_SVC_ADDR": plan.identity_addr,
        "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS": trust_anchors_pem,
        "MESHCTL_PROXY_IDENTITY_TOKEN_FILE": token_file,
        "MESHCTL_PROXY_IDENTITY_DIR": identity_dir,
        "MESHCTL_PROXY_IDENTITY_LOCAL_NAME": w.identity,
        "MESHCTL_PROXY_POD_NAME": f"{w.name}-0",
        "MESHCTL_PROXY_POD_NAMESPACE": NAMESPACE,
        "MESHCTL_PROXY_POD_SERVICE_ACCOUNT": w.name,
        "MESHCTL_PROXY_WORKLOAD_KIND": "Deployment",
        "MESHCTL_PROXY_WORKLOAD_NAME": w.name,
        "MESHCTL_PROXY_SHUTDOWN_GRACE_PERIOD": "2s",
    }


class DemoRun:
    """The demo's processes: started in dependency order, always stopped (use as a context manager)."""

    def __init__(self, plan: Plan, workdir: Path, *, progress=lambda msg: None) -> None:
        self.plan = plan
        self.dir = workdir
        self.progress = progress
        self.procs: list[tuple[str, subprocess.Popen]] = []

    # --- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> "DemoRun":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        with log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def start(self) -> None:
        from meshctl.identity.certs import generate_issuer, generate_trust_anchor

        plan, d = self.plan, self.dir
        check_samples()
        self.progress("generating the trust anchor and issuer")
        anchor = generate_trust_anchor(common_name=f"root.{MESH_NAMESPACE}.{TRUST_DOMAIN}")
        issuer = generate_issuer(anchor, common_name=f"identity.{MESH_NAMESPACE}.{TRUST_DOMAIN}")
        for fname, text in (("ca.crt", anchor.cert_pem), ("issuer.crt", issuer.cert_pem), ("issuer.key", issuer.key_pem)):
            (d / fname).write_text(text)
        os.chmod(d / "issuer.key", 0o600)

        tokens = {w.name: secrets.token_urlsafe(32) for w in plan.workloads}
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
        (d / "tokens.json").write_text(json.dumps({"tokens": [
            {"token": t, "namespace": NAMESPACE, "serviceAccount": name, "audience": "identity.meshctl.io", "expires": expires}
            for name, t in tokens.items()]}))
        for name, t in tokens.items():
            (d / f"{name}.token").write_text(t)

        self.progress("rendering ServiceProfiles from samples/swagger and the destination registry")
        (d / "registry.json").write_text(json.dumps(registry(plan, profiles(plan)), indent=2))

        py = sys.executable
        self.progress(f"starting the identity service on {plan.identity_addr}")
        self._spawn("identity", [py, "-m", "meshctl", "identity", "serve", "--trust-anchors-file", str(d / "ca.crt"),
                                 "--issuer-certificate-file", str(d / "issuer.crt"), "--issuer-key-file", str(d / "issuer.key"),
                                 "--token-registry", str(d / "tokens.json"), "--listen", plan.identity_addr])
        self.progress(f"starting the destination service on {plan.destination_addr}")
        self._spawn("destination", [py, "-m", "meshctl", "destination", "serve", "--registry", str(d / "registry.json"),
                                    "--addr", plan.destination_addr])
        shop = str(SAMPLES / "apps" / "shop.py")
        for w in plan.workloads:
            args = [py, shop, w.app, "--host", w.host, "--port", str(w.port)]
            if w.app == "gateway":
                product, price = plan.workload("product-api"), plan.workload("price-api")
                args += ["--product-api", f"http://{product.authority}", "--price-api", f"http://{price.authority}",
                         "--via", w.outbound]
            if w.app == "price":
                args += ["--failure-rate", str(plan.price_failure_rate), "--latency-ms", str(plan.price_latency_ms)]
            self.progress(f"starting {w.name} on {w.host}:{w.port} and its proxy (inbound {w.inbound}, admin {w.admin})")
            self._spawn(f"{w.name}-app", args)
            (d / w.name).mkdir(exist_ok=True)
            env = proxy_env(plan, w, trust_anchors_pem=anchor.cert_pem, token_file=str(d / f"{w.name}.token"),
                            identity_dir=str(d / w.name))
            self._spawn(f"{w.name}-proxy", [py, "-m", "meshctl_proxy"], env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        pending = {w.name: f"http://{w.admin}/ready" for w in self.plan.workloads}
        pending["destination"] = f"http://{self.plan.destination_addr}/ready"
        pending.update({f"{w.name}-app": f"http://{w.host}:{w.port}/ready" for w in self.plan.workloads})
        while pending:
            self._check_alive()
            for name, url in list(pending.items()):
                try:
                    if httpx.get(url, timeout=1.0).status_code == 200:
                        del pending[name]
                        if name in {w.name for w in self.plan.workloads}:
                            self.progress(f"proxy of {name} is ready (certificate issued)")
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise MeshctlError(f"demo: not ready after {timeout:.0f}s: {', '.join(sorted(pending))} (logs in {self.dir})")
            if pending:
                time.sleep(0.2)

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise MeshctlError(f"demo: {name} exited with {proc.returncode}: {tail[0] if tail else 'no output'}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    # --- traffic and metrics ---------------------------------------------------------

    def scrape(self) -> dict:
        import httpx

        from meshctl.viz import parse_scrape

        out = {}
        for w in self.plan.workloads:
            text = httpx.get(f"http://{w.admin}/metrics", timeout=5).text
            out[w.name] = parse_scrape(text, at=time.monotonic())
        return out

    def drive(self, *, rps: float, seconds: float, on_tick=lambda done, total: None) -> dict[str, int]:
        """Send a bounded load to the gateway, as an ingress would: to its pod, through its proxy's inbound side."""
        import httpx

        gateway = self.plan.workload("product-gateway-api")
        total = max(1, int(rps * seconds))
        codes: dict[str, int] = {}
        start = time.monotonic()
        with httpx.Client(base_url=f"http://{gateway.inbound}", headers={"Host": gateway.authority}, timeout=10) as client:
            for i in range(total):
                delay = start + i / rps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if time.monotonic() - start > seconds + 10:  # never run far past the asked duration
                    break
                try:
                    status = str(client.get(f"/api/products/{1 + i % 5}").status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                codes[status] = codes.get(status, 0) + 1
                if i % max(1, int(rps)) == 0:
                    on_tick(i + 1, total)
                    self._check_alive()
        on_tick(total, total)
        return codes
