"""``meshctl demo``: the three-API shop, meshed, on one machine without a cluster.

What runs, each a real process (docs/demo.md, docs/walkthrough.md):

- the control plane: the destination service (``meshctl destination serve`` over a
  local registry it watches) and the identity service (``meshctl identity serve`` with
  a fresh trust anchor and issuer, and a local token registry);
- ``product-gateway-api``, ``product-api``, ``price-api``: each the sample app
  (``samples/apps/shop.py``) beside a ``meshctl-proxy`` that gets its certificate from
  the identity service, its endpoints and ServiceProfiles from the destination
  service, and speaks mTLS to the other proxies.

Two layouts.  On loopback (any user), each pod is a loopback address (``<prefix>.2``
...): the proxy's inbound side listens on the pod's address at the container port and
the app on a second loopback address, so a client addressing the pod goes through the
proxy; nothing redirects, so the gateway sends its calls to its proxy's outbound
listener explicitly (``shop.py --via``), keeping the service's Host.  With ``--netns``
(root), each pod is a network namespace behind a bridge with the proxy's iptables
rules, Services have virtual IPs and their cluster ports, and the apps know nothing
of the mesh (:mod:`meshctl.demo.netns`).

The plan (addresses, environment, registry) is pure data built by functions here;
:mod:`meshctl.demo.local` runs it, :mod:`meshctl.demo.state` tells readers where it is.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from meshctl.errors import MeshctlError, UsageError

NAMESPACE = "shop"
MESH_NAMESPACE = "meshctl"
TRUST_DOMAIN = "cluster.local"
CLUSTER_DOMAIN = "cluster.local"
SAMPLES = Path(__file__).resolve().parents[3] / "samples"


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyListeners:
    """Where one proxy listens (``MESHCTL_PROXY_*_LISTEN_ADDR``) and where it is reached from outside its pod."""

    inbound: str
    outbound: str
    admin: str
    control: str


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    name: str  # Deployment and ServiceAccount name
    service: str
    port: int  # the container port
    app: str  # samples/apps/shop.py role
    spec: str  # samples/swagger file
    pod_ip: str  # the pod's address: its proxy answers there, the registry's endpoint is there
    app_host: str  # where the application listens (what 127.0.0.1 is inside a pod)
    service_port: int  # the Service's port (the container port on loopback, 80 for the gateway in --netns)
    cluster_ip: str | None = None  # --netns: the Service's virtual IP
    netns: str | None = None  # --netns: the pod's network namespace

    @property
    def pod(self) -> str:
        return f"{self.name}-0"

    @property
    def authority(self) -> str:
        return f"{self.service}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}:{self.service_port}"

    @property
    def identity(self) -> str:
        return f"{self.name}.{NAMESPACE}.serviceaccount.identity.{MESH_NAMESPACE}.{TRUST_DOMAIN}"

    @property
    def endpoint(self) -> str:
        """The pod's address and container port: what the destination service hands out."""
        return f"{self.pod_ip}:{self.port}"

    @property
    def listen(self) -> ProxyListeners:
        if self.netns:
            # In a pod: iptables sends inbound connections to 4143 and the app's own outbound
            # ones to 4140 (meshctl-proxy init), as Linkerd's ports.
            return ProxyListeners(inbound="0.0.0.0:4143", outbound="127.0.0.1:4140", admin="0.0.0.0:4191",
                                  control="0.0.0.0:4190")
        # On loopback nothing redirects: the inbound side listens on the pod's address at the
        # container port, so a client addressing the pod (ab, an ingress) goes through the proxy,
        # whose inbound side learns the port from the Host header and forwards to the app.
        return ProxyListeners(inbound=self.endpoint, outbound=f"{self.pod_ip}:4140", admin=f"{self.pod_ip}:4191",
                              control=f"{self.pod_ip}:4190")

    @property
    def reachable(self) -> ProxyListeners:
        """The proxy's listeners as seen from the host (Prometheus, tap, the state file)."""
        if self.netns:
            return ProxyListeners(inbound=f"{self.pod_ip}:4143", outbound="127.0.0.1:4140",
                                  admin=f"{self.pod_ip}:4191", control=f"{self.pod_ip}:4190")
        return self.listen

    # The one-shot demo's names for the same addresses.
    @property
    def inbound(self) -> str:
        return self.reachable.inbound

    @property
    def outbound(self) -> str:
        return self.reachable.outbound

    @property
    def admin(self) -> str:
        return self.reachable.admin


# (name, Service, container port, shop.py role, spec); the order is the start order's reverse of calls.
SHOP = (
    ("product-gateway-api", "product-gateway-api-svc", 5000, "gateway", "product-gateway-api.json"),
    ("product-api", "product-api-svc", 9090, "product", "product-api.json"),
    ("price-api", "price-api-svc", 8080, "price", "price-api.json"),
)
GATEWAY = "product-gateway-api"
NETNS_NET = "198.18.0"  # RFC 2544's benchmarking range (198.18.0.0/15), as tests/netns.py (docs/architecture.md)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Where everything of one demo lives: pure data, derived from the prefix (or the netns lab id)."""

    prefix: str = "127.0.10"
    price_failure_rate: float = 0.1
    price_latency_ms: float = 0.0
    netns_id: str | None = None  # --netns: namespaces are named "<id>-<pod>"
    netns_net: str = NETNS_NET  # --netns: the /24 of the pods, Services and the host's link

    @property
    def control_host(self) -> str:
        return f"{self.netns_net}.2" if self.netns_id else f"{self.prefix}.1"

    @property
    def control_netns(self) -> str | None:
        return f"{self.netns_id}-control" if self.netns_id else None

    @property
    def destination_addr(self) -> str:
        return f"{self.control_host}:8086"

    @property
    def identity_addr(self) -> str:
        return f"{self.control_host}:8080"

    @property
    def workloads(self) -> tuple[Workload, ...]:
        out = []
        for i, (name, service, port, app, spec) in enumerate(SHOP):
            if self.netns_id:
                # .1 is the host's end of the lab, .2 the control plane, pods from .3; Service
                # IPs from .100 on the same on-link /24, so a pod needs no route to reach them.
                out.append(Workload(name, service, port, app, spec, pod_ip=f"{self.netns_net}.{3 + i}", app_host="127.0.0.1",
                                    service_port=80 if name == GATEWAY else port,
                                    cluster_ip=f"{self.netns_net}.{100 + i}", netns=f"{self.netns_id}-{app}"))
            else:
                out.append(Workload(name, service, port, app, spec, pod_ip=f"{self.prefix}.{2 + i}",
                                    app_host=f"{self.prefix}.{102 + i}", service_port=port))
        return tuple(out)

    def workload(self, name: str) -> Workload:
        return next(w for w in self.workloads if w.name == name)

    @property
    def gateway_url(self) -> str:
        """What ``kubectl get svc`` would show for the gateway: its Service (--netns) or its pod."""
        gw = self.workload(GATEWAY)
        if gw.netns:
            return f"http://{gw.cluster_ip}" if gw.service_port == 80 else f"http://{gw.cluster_ip}:{gw.service_port}"
        return f"http://{gw.endpoint}"


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
    """The destination service's local registry: each Service's endpoint is its pod (docs/destination.md)."""
    services = []
    for w in plan.workloads:
        svc = {"name": w.service, "namespace": NAMESPACE, "ports": [{"port": w.service_port, "endpoints": [
            {"address": w.endpoint, "labels": {"pod": w.pod, "deployment": w.name}, "identity": w.identity},
        ]}]}
        if w.cluster_ip:
            svc["clusterIPs"] = [w.cluster_ip]
        services.append(svc)
    return {"clusterDomain": CLUSTER_DOMAIN, "services": services, "profiles": service_profiles}


PROXY_UID = 2102  # the proxy's uid in a pod (Linkerd's), which meshctl-proxy init exempts from redirection


def proxy_env(plan: Plan, w: Workload, *, trust_anchors_pem: str, token_file: str, identity_dir: str) -> dict[str, str]:
    """The ``MESHCTL_PROXY_*`` environment of one pod's proxy: what ``inject --manual`` renders, with the demo's addresses."""
    listen = w.listen
    env = {
        "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": listen.inbound,
        "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": listen.outbound,
        "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": listen.admin,
        "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": listen.control,
        "MESHCTL_PROXY_INBOUND_FORWARD_HOST": w.app_host,
        "MESHCTL_PROXY_INBOUND_PORTS": str(w.port),
        "MESHCTL_PROXY_DESTINATION_SVC_ADDR": plan.destination_addr,
        "MESHCTL_PROXY_IDENTITY_SVC_ADDR": plan.identity_addr,
        "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS": trust_anchors_pem,
        "MESHCTL_PROXY_IDENTITY_TOKEN_FILE": token_file,
        "MESHCTL_PROXY_IDENTITY_DIR": identity_dir,
        "MESHCTL_PROXY_IDENTITY_LOCAL_NAME": w.identity,
        "MESHCTL_PROXY_POD_NAME": w.pod,
        "MESHCTL_PROXY_POD_NAMESPACE": NAMESPACE,
        "MESHCTL_PROXY_POD_SERVICE_ACCOUNT": w.name,
        "MESHCTL_PROXY_WORKLOAD_KIND": "Deployment",
        "MESHCTL_PROXY_WORKLOAD_NAME": w.name,
        "MESHCTL_PROXY_SHUTDOWN_GRACE_PERIOD": "2s",
    }
    if w.netns:
        env["MESHCTL_PROXY_CLUSTER_NETWORKS"] = f"{plan.netns_net}.0/24"
    return env


def app_argv(plan: Plan, w: Workload, *, knobs: Path | None = None) -> list[str]:
    """``samples/apps/shop.py`` for one workload: the app knows nothing of the mesh, except ``--via`` on loopback."""
    args = [sys.executable, str(SAMPLES / "apps" / "shop.py"), w.app, "--host", w.app_host, "--port", str(w.port)]
    if w.app == "gateway":
        product, price = plan.workload("product-api"), plan.workload("price-api")
        args += ["--product-api", f"http://{product.authority}", "--price-api", f"http://{price.authority}"]
        if not w.netns:
            args += ["--via", w.outbound]  # what the nat table does in a pod
    if w.app == "price":
        args += ["--failure-rate", str(plan.price_failure_rate), "--latency-ms", str(plan.price_latency_ms)]
    if knobs is not None:
        args += ["--knobs", str(knobs)]
    return args


class DemoRun:
    """The one-shot demo (``meshctl demo run``): the local mesh brought up, driven, and always brought down."""

    def __init__(self, plan: Plan, workdir: Path, *, progress=lambda msg: None) -> None:
        from meshctl.demo.local import LocalDemo

        self.plan = plan
        self.dir = workdir
        self.mesh = LocalDemo(workdir, progress=progress)
        self.mesh.scrape_interval_s = 1.0  # a run lasts seconds: summarise it from 1s scrapes
        self.progress = progress

    def __enter__(self) -> "DemoRun":
        try:
            self.mesh.up(self.plan, prometheus=True, profiles=True, dashboard=False)
        except BaseException:
            self.mesh.down(quiet=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.mesh.down(quiet=True)

    @property
    def prometheus_url(self) -> str:
        return self.mesh.extra["prometheus_url"]

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Until Prometheus has scraped every proxy once: traffic counted before that would be missed."""
        from meshctl.viz import localprom

        localprom.wait_for_targets(self.prometheus_url, len(self.plan.workloads), timeout=timeout)

    def drive(self, *, rps: float, seconds: float, on_tick=lambda done, total: None) -> dict[str, int]:
        """Send a bounded load to the gateway, as an ingress would: to its pod, through its proxy's inbound side."""
        from meshctl.demo.load import run_load

        total = max(1, int(rps * seconds))
        result = run_load(self.plan.gateway_url + "/api/products/1", total=total, concurrency=1, rps=rps,
                          max_seconds=seconds + 10, on_progress=on_tick, check=self.mesh.check_alive)
        return result.codes
