"""Buoyant's "Beyond Round Robin", reproduced on loopback with the real proxy.

Five endpoints answer in ~10 ms; in the middle half of a run one of them
turns slow (+500 ms).  Two real ``meshctl-proxy`` processes, one balancing
with peak-EWMA and one with round robin, resolve the service through a real
``meshctl destination serve`` process and stand in front of the same
backends; a steady open-loop load (requests start on schedule, whatever is
still outstanding) sends each of them a request at the same moments, so the
slow window and the machine's own noise hit both alike.  Two phases: no slow
endpoint (the baseline), then one slow endpoint.  The route has a
``timeout``.

Reported: p50 / p99 / p99.9 latency as the client sees it (a request cut by
the timeout counts at its 504's latency) and the success rate.  Targets:
peak-EWMA p99 (slow) <= 1.5 x its baseline p99, and >= 10 x lower than round
robin's p99 (slow).

Then the per-request cost of the policy objects (balancer pick + release,
route matching, retry-budget deposit) in microseconds, against the proxy
core's forwarding path measured the same way (closed loop, one connection):
a request through the proxy to a name it does not resolve (forwarded
directly) vs one through discovery, balancing and route policy.

    python benches/bench_balancer.py            # ~70 s
    python benches/bench_balancer.py --quick    # ~30 s, smoke

Processes: backends (one process), the destination service, the two
proxies, and this load generator; all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.traffic.lab import HOST, Backend, Client, profile_doc, registry_doc, write_json  # noqa: E402

SERVICE = "web.shop.svc.cluster.local"
AUTH = f"{SERVICE}:8080"


# --- processes -------------------------------------------------------------------

async def _serve_backends(n: int, base_ms: float) -> None:
    backends = [Backend(f"b{i}", delay=base_ms / 1000) for i in range(n)]
    for b in backends:
        await b.start()
    print(json.dumps([b.port for b in backends]), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def env_with_src() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "NO_COLOR": "1"}


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.stderr.read().decode()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


class Stack:
    def __init__(self, tmp: Path, n: int, base_ms: float, timeout_ms: int) -> None:
        self.tmp = tmp
        self.n = n
        self.base_ms = base_ms
        self.timeout_ms = timeout_ms
        self.procs: list[subprocess.Popen] = []

    def start_backends(self) -> list[int]:
        proc = subprocess.Popen([sys.executable, __file__, "_backends", str(self.n), str(self.base_ms)],
                                env=env_with_src(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        self.ports = json.loads(proc.stdout.readline())
        return self.ports

    def start_destination(self) -> int:
        reg = self.tmp / "registry.json"
        profile = profile_doc(SERVICE, {"routes": [
            {"name": "GET /work", "condition": {"method": "GET", "pathRegex": "/work"},
             "timeout": f"{self.timeout_ms}ms"}]})
        write_json(reg, registry_doc({("web", "shop", 8080): [f"{HOST}:{p}" for p in self.ports]}, [profile]))
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "meshctl", "destination", "serve", "--registry", str(reg),
                                 "--addr", f"{HOST}:{port}"], env=env_with_src(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        wait_port(port, proc, "destination service")
        self.dst_port = port
        return port

    def start_proxy(self, balancer: str) -> int:
        out, inb, adm, ctl = free_port(), free_port(), free_port(), free_port()
        env = {**env_with_src(),
               "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": f"{HOST}:{out}", "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": f"{HOST}:{inb}",
               "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": f"{HOST}:{adm}", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": f"{HOST}:{ctl}",
               "MESHCTL_PROXY_DESTINATION_SVC_ADDR": f"{HOST}:{self.dst_port}", "MESHCTL_PROXY_BALANCER": balancer,
               "MESHCTL_PROXY_IDENTITY_DISABLED": "true", "MESHCTL_PROXY_LOG_LEVEL": "warn"}
        proc = subprocess.Popen([sys.executable, "-m", "meshctl_proxy"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        self.procs.append(proc)
        wait_port(out, proc, "proxy")
        return out

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --- load ------------------------------------------------------------------------

async def set_delay(port: int, ms: float) -> None:
    await Client((HOST, port)).request("control", f"/__delay/{ms:g}")


async def set_delays(ports: list[int], ms: float) -> None:
    for port in ports:
        await set_delay(port, ms)


async def open_loop(addrs: dict[str, tuple[str, int]], *, rate: float, seconds: float, slow_port: int | None,
                    base_ms: float, slow_ms: float, max_outstanding: int = 400) -> tuple[dict, dict]:
    """Every 1/rate s one request starts to each proxy in *addrs*, for *seconds*, whatever is outstanding.

    Both proxies are loaded at the same moments, in front of the same backends:
    the slow window and the machine's noise hit them alike.  Returns results
    and requests skipped at the outstanding cap, per proxy.
    """
    idle: dict[str, list[Client]] = {name: [] for name in addrs}
    results: dict[str, list] = {name: [] for name in addrs}
    skipped = dict.fromkeys(addrs, 0)
    tasks: set[asyncio.Task] = set()
    total = int(rate * seconds)
    start = time.perf_counter()

    async def one(name: str) -> None:
        client = idle[name].pop() if idle[name] else Client(addrs[name])
        r = await client.request(AUTH, "/work", timeout=10)
        results[name].append(r)
        if client.writer is not None:
            idle[name].append(client)

    slow_on = slow_off = None
    if slow_port is not None:
        slow_on, slow_off = int(total * 0.25), int(total * 0.75)
    for i in range(total):
        if i == slow_on:
            await set_delay(slow_port, base_ms + slow_ms)
        if i == slow_off:
            await set_delay(slow_port, base_ms)
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        for name in addrs:
            if len(tasks) >= max_outstanding:
                skipped[name] += 1
                continue
            t = asyncio.ensure_future(one(name))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for clients in idle.values():
        for c in clients:
            c.close()
    return results, skipped


def pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, int(round(q * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


def summarize(results) -> dict:
    ms = sorted(r.latency * 1000 for r in results)
    ok = sum(200 <= r.status < 300 for r in results)
    return {"n": len(results), "p50": pct(ms, 0.50), "p99": pct(ms, 0.99), "p999": pct(ms, 0.999),
            "success": ok / len(results) if results else 0.0,
            "timeouts": sum(r.error == "request timeout" for r in results)}


# --- policy cost -----------------------------------------------------------------

def policy_cost(iterations: int) -> dict:
    from meshctl_proxy.policy.balance import PeakEwmaBalancer, RoundRobinBalancer
    from meshctl_proxy.discovery.resolution import WeightedAddr
    from meshctl_proxy.policy.route_policy import compile_profile

    eps = [WeightedAddr.make(HOST, 9000 + i) for i in range(10)]
    out = {}
    for name, bal in (("peak-ewma", PeakEwmaBalancer(rng=random.Random(1))), ("round-robin", RoundRobinBalancer())):
        bal.update(eps)
        now = time.monotonic()
        t0 = time.perf_counter()
        for i in range(iterations):
            ep = bal.acquire(now + i * 1e-4)
            bal.release(ep, now + i * 1e-4, rtt=0.01, failed=False)
        out[f"balancer {name} (10 endpoints), acquire+release"] = (time.perf_counter() - t0) / iterations * 1e6
    routes = [{"name": f"GET /r{i}/{{id}}", "condition": {"method": "GET", "pathRegex": f"/r{i}/[^/]*"}}
              for i in range(10)]
    policy = compile_profile(profile_doc(SERVICE, {"routes": routes}))
    t0 = time.perf_counter()
    for _ in range(iterations):
        policy.match("GET", "/r9/123")  # the last route: the worst case of first-match
    out["route match (10 routes, last matches)"] = (time.perf_counter() - t0) / iterations * 1e6
    budget = policy.budget.make()
    t0 = time.perf_counter()
    for i in range(iterations):
        budget.deposit(i * 1e-4)
    out["retry budget deposit"] = (time.perf_counter() - t0) / iterations * 1e6
    return out


async def forwarding_cost(addr, backend_port: int, n: int) -> dict:
    """Closed loop: per-request round trip through the proxy, direct forwarding vs the traffic path.

    The two kinds alternate request by request (one connection each), so
    drift in machine load hits both alike; medians are reported.
    """
    labels = (("proxy core, forwarded as addressed", f"{HOST}:{backend_port}"),
              ("proxy core + discovery, balancer, route policy", AUTH))
    clients = [Client(addr) for _ in labels]
    lat: list[list[float]] = [[] for _ in labels]
    for i in range(200 + n):
        for k, (_label, authority) in enumerate(labels):
            r = await clients[k].request(authority, "/work")
            assert r.status == 200, r
            if i >= 200:
                lat[k].append(r.latency * 1e6)
    for c in clients:
        c.close()
    return {label: statistics.median(lat[k]) for k, (label, _a) in enumerate(labels)}


async def dispatch_cost(n: int) -> dict:
    """CPU per request of the router seam alone: an upstream that answers at once, no sockets."""
    from meshctl_proxy.body import EMPTY
    from meshctl_proxy.discovery.client import DestinationClient
    from meshctl_proxy.discovery.resolution import WeightedAddr, Resolution
    from meshctl_proxy.model import ConnectionContext, Request, Response
    from meshctl_proxy.policy.route_policy import compile_profile  # noqa: F401  (the profile below is compiled by the router)
    from meshctl_proxy.policy.router import DirectRouter
    from meshctl_proxy.policy.traffic_router import TrafficRouter

    class Immediate:
        async def send(self, request, endpoint):
            return Response(200, [], EMPTY)

    client = DestinationClient((HOST, 1))
    router = TrafficRouter(client)
    watch = client.watch(AUTH)  # its stream fails (nothing listens on port 1); the resolution is set by hand
    routes = [{"name": f"GET /r{i}/{{id}}", "condition": {"method": "GET", "pathRegex": f"/r{i}/[^/]*"},
               "timeout": "1s"} for i in range(10)]
    watch._set(Resolution(AUTH, True, tuple(WeightedAddr.make(HOST, 9000 + i) for i in range(5)),
                          profile_doc(SERVICE, {"routes": routes})))
    ctx = ConnectionContext("outbound", (HOST, 1), (HOST, 2), None)
    up = Immediate()
    out = {}
    for label, rtr, req in (
            ("direct (DirectRouter)", DirectRouter(), Request(b"GET", b"/r9/1", f"{HOST}:9000", [], context=ctx)),
            ("traffic (TrafficRouter, 5 endpoints, 10 routes, timeout)", router,
             Request(b"GET", b"/r9/1", AUTH, [], context=ctx))):
        for _ in range(1000):
            await rtr.dispatch(req, up)
        t0 = time.perf_counter()
        for _ in range(n):
            await rtr.dispatch(req, up)
        out[label] = (time.perf_counter() - t0) / n * 1e6
    await client.aclose()
    return out


# --- main ------------------------------------------------------------------------

def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_backends":
        asyncio.run(_serve_backends(int(sys.argv[2]), float(sys.argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second to each proxy (open loop)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    ap.add_argument("--base-ms", type=float, default=10.0)
    ap.add_argument("--slow-ms", type=float, default=500.0, help="added latency of the slow endpoint")
    ap.add_argument("--timeout-ms", type=int, default=1000, help="the route's timeout")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 6.0
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), args.endpoints, args.base_ms, args.timeout_ms)
        try:
            ports = stack.start_backends()
            stack.start_destination()
            # Both balancers side by side, each in its own proxy process, loaded
            # at the same moments: first with no slow endpoint, then with one.
            addrs = {b: (HOST, stack.start_proxy(b)) for b in ("peak-ewma", "round-robin")}
            # warm-up: discovery resolved, connections pooled, estimates learned
            asyncio.run(open_loop(addrs, rate=args.rate, seconds=1.0, slow_port=None, base_ms=args.base_ms, slow_ms=0))
            table = {}
            for slow in (False, True):
                results, skipped = asyncio.run(open_loop(
                    addrs, rate=args.rate, seconds=args.seconds, slow_port=ports[-1] if slow else None,
                    base_ms=args.base_ms, slow_ms=args.slow_ms))
                for balancer in addrs:
                    summary = summarize(results[balancer])
                    summary["skipped"] = skipped[balancer]
                    table[(balancer, slow)] = summary
            # Backends answer at once here: what is left is the proxy's own cost.
            asyncio.run(set_delays(ports, 0))
            cost = asyncio.run(forwarding_cost(addrs["peak-ewma"], ports[0], 2000 if not args.quick else 500))
        finally:
            stack.stop()
    print(f"Beyond Round Robin: {args.endpoints} endpoints at {args.base_ms:g} ms, one +{args.slow_ms:g} ms for the "
          f"middle half of the {args.seconds:g} s slow phase, {args.rate:g} req/s to each proxy (open loop), route timeout "
          f"{args.timeout_ms} ms, real proxy + destination service on loopback")
    # Tails on a 2-core machine follow whatever else runs: say how busy it was.
    print(f"load average (1 min) before {load_before:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'run':34} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'success':>8} {'timeouts':>8}")
    for (balancer, slow), s in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0] != "peak-ewma")):
        label = f"{balancer}, {'one slow endpoint' if slow else 'no slow endpoint'}"
        print(f"{label:34} {s['n']:>8} {s['p50']:>8.1f} {s['p99']:>8.1f} {s['p999']:>9.1f} "
              f"{s['success'] * 100:>7.2f}% {s['timeouts']:>8}" + (f"  ({s['skipped']} skipped)" if s["skipped"] else ""))
    base, ewma, rr = table[("peak-ewma", False)], table[("peak-ewma", True)], table[("round-robin", True)]
    r1 = ewma["p99"] / base["p99"]
    r2 = rr["p99"] / ewma["p99"]
    print(f"peak-EWMA p99 slow / no slow = {r1:.2f}x (target <= 1.5x: {'met' if r1 <= 1.5 else 'NOT met'})")
    print(f"round robin p99 / peak-EWMA p99 (slow) = {r2:.1f}x (target >= 10x: {'met' if r2 >= 10 else 'NOT met'})")
    print()
    print("Per-request cost (microseconds)")
    for k, v in policy_cost(20_000 if args.quick else 200_000).items():
        print(f"  {k:58} {v:8.2f}")
    for k, v in asyncio.run(dispatch_cost(10_000 if args.quick else 50_000)).items():
        print(f"  router dispatch, {k:41} {v:8.2f}")
    for k, v in cost.items():
        print(f"  {k + ' (median round trip)':58} {v:8.1f}")
    if len(cost) == 2:
        a, b = cost.values()
        print(f"  traffic path adds {b - a:.1f} us per request ({(b - a) / a * 100:.1f}% of the direct round trip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
