"""``meshctl demo up --netns``: each pod in its own network namespace, as in a cluster.

The design of ``tests/netns.py`` (docs/architecture.md), with what a node adds:

- a bridge namespace ``<id>-br`` holding ``br0``; every pod namespace (``<id>-control``,
  ``<id>-gateway``, ``<id>-product``, ``<id>-price``) has ``lo`` and ``eth0``, a veth whose
  other end is enslaved to ``br0``; addresses from 198.18.0.0/24 (RFC 2544's benchmarking
  range), no default route anywhere, so nothing the demo sends can leave it;
- the host's end: one veth ``<id>h`` in the host's namespace with 198.18.X.1/24 (X is 0 for the
  first demo, another free /24 of 198.18.0.0/15 for the next), its peer on
  ``br0``, so that Prometheus, the dashboard, ``ab`` and a browser on this machine reach the
  pods (and nothing else is routed: the pods have no route beyond the /24);
- Services: each has a virtual IP (198.18.0.100 + i) and its cluster port.  Inside a pod,
  ``/etc/netns/<ns>/hosts`` (bind-mounted over ``/etc/hosts`` by ``ip netns exec``) names the
  Service IPs, the app connects to ``product-api-svc.shop.svc.cluster.local:9090``, and the
  pod's nat table (``meshctl-proxy init``, the init container's job) redirects that to the
  proxy's outbound port, which resolves the name through the destination service and
  connects to the endpoint's pod IP with mTLS; the peer pod's nat table redirects it to the
  inbound port.  The apps do not know the mesh is there.  From the host, the Service IPs
  are answered by the bridge namespace as kube-proxy answers them on a node: DNAT to the
  pod and container port, with the source masqueraded so the reply comes back the same
  way (the gateway's Service on port 80, as in the walkthrough).

The namespace names carry an id derived from the state directory (``md`` + 6 hex digits),
so two demos never share one and a later ``up`` or ``down`` finds what a killed run left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshctl import demo as plan_mod
from meshctl.errors import MeshctlError

NETNS_DIR = Path("/var/run/netns")
ETC_NETNS = Path("/etc/netns")
HOST_OCTET = 1  # the host's end of the lab
NODE_OCTET = 254  # the bridge namespace's own address (kube-proxy's node)
PREFIXLEN = 24


def _run(argv: list[str], *, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise MeshctlError(f"demo --netns: {' '.join(argv)}: {(proc.stderr or proc.stdout).strip() or proc.returncode}")
    return proc


def namespaces(plan: plan_mod.Plan) -> list[str]:
    """Every namespace of the plan: the bridge's first, then the control plane's and the pods'."""
    assert plan.netns_id and plan.control_netns
    return [f"{plan.netns_id}-br", plan.control_netns, *(w.netns for w in plan.workloads if w.netns)]


def host_link(plan: plan_mod.Plan) -> str:
    return f"{plan.netns_id}h"  # at most 9 characters: interface names stop at 15


def _existing(plan: plan_mod.Plan) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"{plan.netns_id}-")]


def _kill_inside(ns: str) -> None:
    for _ in range(40):
        pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.05)


def remove(plan: plan_mod.Plan) -> None:
    """Delete the demo's namespaces (killing anything still inside), its host link and its /etc/netns files."""
    for ns in _existing(plan):
        _kill_inside(ns)
        _run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    for ns in namespaces(plan):
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    # Deleting the bridge namespace destroyed the veth pair; a half-made one may remain.
    _run(["ip", "link", "del", host_link(plan)], check=False)


def _nets_in_use() -> dict[str, str]:
    """198.18.X (the /24s of RFC 2544's range) that this host's interfaces have, with the interface."""
    out = _run(["ip", "-4", "-o", "addr", "show"]).stdout
    used = {}
    for line in out.splitlines():
        fields = line.split()
        addr = fields[3] if len(fields) > 3 else ""
        if addr.startswith("198.18.") or addr.startswith("198.19."):
            used[addr.rsplit(".", 1)[0]] = fields[1]
    return used


def choose_net(preferred: int) -> str:
    """A free 198.18.X /24 for a new --netns demo: X = *preferred* when free, else the next free one.

    Two demos (or two test runs) at once each need their own: the host's link and its route
    are in the host's namespace, the one thing they share."""
    used = _nets_in_use()
    for i in range(256):
        net = f"198.18.{(preferred + i) % 256}"
        if net not in used:
            return net
    raise MeshctlError("demo --netns: every 198.18.X.0/24 is in use on this host")


def _check_host_free(plan: plan_mod.Plan) -> None:
    iface = _nets_in_use().get(plan.netns_net)
    if iface:
        raise MeshctlError(f"demo --netns: {plan.netns_net}.0/24 is already on interface {iface} of this host "
                           "(another --netns demo? meshctl demo down --dir DIR)")


def create(plan: plan_mod.Plan) -> dict:
    """The namespaces, the bridge, the host's link and the Service IPs; what a killed run left is removed first."""
    if os.geteuid() != 0:
        raise MeshctlError("demo up --netns needs root (it creates network namespaces and iptables rules)")
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            raise MeshctlError(f"demo --netns: {tool!r} not found (Debian packages iproute2, iptables, util-linux)")
    remove(plan)
    _check_host_free(plan)
    br = f"{plan.netns_id}-br"
    try:
        for ns in namespaces(plan):
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "set", "lo", "up"], netns=ns)
        _run(["ip", "link", "add", "br0", "type", "bridge"], netns=br)
        _run(["ip", "link", "set", "br0", "up"], netns=br)
        pods = [(plan.control_netns, plan.control_host)] + [(w.netns, w.pod_ip) for w in plan.workloads]
        for i, (ns, ip) in enumerate(pods):
            peer = f"v{i}"
            # Both ends made from inside the pod, the peer moved straight into the bridge
            # namespace: the host's namespace never sees them (tests/netns.py does the same).
            _run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", br], netns=ns)
            _run(["ip", "link", "set", peer, "master", "br0"], netns=br)
            _run(["ip", "link", "set", peer, "up"], netns=br)
            _run(["ip", "addr", "add", f"{ip}/{PREFIXLEN}", "dev", "eth0"], netns=ns)
            _run(["ip", "link", "set", "eth0", "up"], netns=ns)
        # The host's end: made in the bridge namespace, its peer moved into ours.
        _run(["ip", "link", "add", "hostlink", "type", "veth", "peer", "name", host_link(plan), "netns", str(os.getpid())],
             netns=br)
        _run(["ip", "link", "set", "hostlink", "master", "br0"], netns=br)
        _run(["ip", "link", "set", "hostlink", "up"], netns=br)
        _run(["ip", "addr", "add", f"{plan.netns_net}.{HOST_OCTET}/{PREFIXLEN}", "dev", host_link(plan)])
        _run(["ip", "link", "set", host_link(plan), "up"])
        _services(plan, br)
        for w in plan.workloads:
            _hosts_file(plan, w.netns)
    except BaseException:
        remove(plan)
        raise
    return {"namespaces": namespaces(plan), "host_link": host_link(plan)}


def _services(plan: plan_mod.Plan, br: str) -> None:
    """Service IPs answered by the bridge namespace, as kube-proxy does on a node (DNAT + masquerade)."""
    _run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=br)
    _run(["ip", "addr", "add", f"{plan.netns_net}.{NODE_OCTET}/{PREFIXLEN}", "dev", "br0"], netns=br)
    for w in plan.workloads:
        _run(["ip", "addr", "add", f"{w.cluster_ip}/32", "dev", "br0"], netns=br)
        _run(["iptables", "-t", "nat", "-A", "PREROUTING", "-d", w.cluster_ip, "-p", "tcp", "--dport",
              str(w.service_port), "-j", "DNAT", "--to-destination", w.endpoint], netns=br)
    _run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"],
         netns=br)


def _hosts_file(plan: plan_mod.Plan, ns: str | None) -> None:
    """The pod's /etc/hosts (``ip netns exec`` bind-mounts /etc/netns/NS/hosts): the Services' names, as DNS would."""
    lines = ["127.0.0.1 localhost"]
    for w in plan.workloads:
        short = w.service
        lines.append(f"{w.cluster_ip} {short}.{plan_mod.NAMESPACE}.svc.{plan_mod.CLUSTER_DOMAIN} "
                     f"{short}.{plan_mod.NAMESPACE} {short}")
    d = ETC_NETNS / str(ns)
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text("\n".join(lines) + "\n")


def init_pods(plan: plan_mod.Plan) -> None:
    """The proxy's init step in every pod: ``meshctl-proxy init`` programs its nat table."""
    from meshctl.demo.local import _code_path

    for w in plan.workloads:
        proc = subprocess.run(["ip", "netns", "exec", str(w.netns), sys.executable, "-m", "meshctl_proxy", "init",
                               "--proxy-uid", str(plan_mod.PROXY_UID)], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": _code_path()})
        if proc.returncode != 0:
            raise MeshctlError(f"demo --netns: meshctl-proxy init in {w.netns}: "
                               f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or proc.returncode}")


def intact(plan: plan_mod.Plan) -> bool:
    """Every namespace of the plan still exists (a reboot removes them all)."""
    return set(namespaces(plan)) <= set(_existing(plan))
