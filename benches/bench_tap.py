"""What tap costs the proxy: throughput without a subscriber, before tap, and with subscribers.

Four meshctl-proxies, each one hop in front of the same nginx (one worker,
a 12-byte response), routed by Host on the outbound listener:

- before: the proxy as it was before the request hook and tap (``--before``,
  a git revision, extracted with ``git archive`` and run from there);
- tap, no subscriber: this checkout's proxy, its control listener up, nobody tapping;
- tap, 1 subscriber @100 rps: the same with one ``POST /tap`` subscription at
  ``max_rps`` 100 (``meshctl viz tap --max-rps 100``), its events read and counted;
- tap, 1 subscriber @all: a subscription at ``max_rps`` 100000, every request tapped.

wrk (HTTP/1.1, closed loop, keep-alive) runs against each in turn, round after
round, so the noise of a busy machine falls on all alike; reported are the
median requests per second and the proxy's requests per CPU second.

    python benches/bench_tap.py                        # 5 s per run, 5 rounds
    python benches/bench_tap.py --duration 3 --rounds 3 --before 8248f26
    python benches/bench_tap.py --micro                # in-process: the hook and the hub, per request

Needs wrk and nginx (scripts/apt-packages.txt).  Loopback only; every load is
bounded in time; every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import Procs, cpu_seconds, free_port, run_wrk, start_nginx, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


PATHS_ADDED = ("src/meshctl_proxy/hooks.py", "src/meshctl_proxy/telemetry/tap.py", "src/meshctl_proxy/tap.py")


def default_before() -> str:
    """The newest commit in this checkout's history with neither the request hook nor tap."""
    revs = subprocess.run(["git", "-C", str(ROOT), "rev-list", "--date-order", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.split()
    for rev in revs:
        has = [subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:{path}"],
                              capture_output=True).returncode == 0 for path in PATHS_ADDED]
        if not any(has):
            return rev[:12]
    sys.exit("bench_tap: no commit without the hook and tap in this history; give --before REV")


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def start_proxy(procs: Procs, src: Path, *, outbound: int, admin: int, control: int):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_PROXY_")}
    env.update({"PYTHONPATH": str(src),
                "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": f"127.0.0.1:{outbound}",
                "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
                "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": f"127.0.0.1:{admin}",
                "MESHCTL_PROXY_IDENTITY_DISABLED": "true", "MESHCTL_PROXY_LOG_LEVEL": "warn"})
    if (src / "meshctl_proxy" / "telemetry" / "tap.py").exists():
        env["MESHCTL_PROXY_CONTROL_LISTEN_ADDR"] = f"127.0.0.1:{control}"
    p = procs.start([sys.executable, "-m", "meshctl_proxy"], env=env, cwd=str(src.parent))
    wait_port(outbound)
    return p


class Subscriber(threading.Thread):
    """One tap subscription read to the end (plain sockets: its own CPU is not the proxy's)."""

    def __init__(self, control: int, max_rps: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", control), timeout=10)
        self.sock.settimeout(None)  # idle while the other proxies take their turn
        body = json.dumps({"max_rps": max_rps}).encode()
        self.sock.sendall(b"POST /tap HTTP/1.1\r\nhost: bench\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.requests = 0  # req events received
        self.start()

    def run(self) -> None:
        marker, tail = b'"event":"req"', b""
        try:
            while chunk := self.sock.recv(1 << 16):
                data = tail + chunk
                self.requests += data.count(marker)
                tail = data[-(len(marker) - 1):]  # a marker split across reads is counted once, here
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def interleaved(targets, rounds: int) -> dict[str, list[tuple[dict, float]]]:
    """Run each target's load in turn, round after round, so a busy machine's noise falls on all alike.

    *targets*: (name, pid of the proxy, load) with load() -> a wrk result; returns per name the
    (wrk result, proxy CPU seconds) of each round.  A run with errors stops the bench.
    """
    results: dict[str, list[tuple[dict, float]]] = {name: [] for name, _, _ in targets}
    for _ in range(rounds):
        for name, pid, load in targets:
            cpu0 = cpu_seconds(pid)
            r = load()
            cpu = cpu_seconds(pid) - cpu0
            assert r["errors"] == 0, (name, r)
            results[name].append((r, cpu))
    return results


def micro(n: int = 200_000) -> None:
    """Per-request cost of the hook with the tap hub registered, measured in-process (no sockets)."""
    import asyncio

    sys.path.insert(0, str(ROOT / "src"))
    from meshctl_proxy.hooks import RequestHooks
    from meshctl_proxy.model import ConnectionContext, Endpoint, Request
    from meshctl_proxy.telemetry.tap import TapFilter, TapHub

    class NullTransport:
        def write(self, data) -> None:
            pass

    def per_call(fn, count: int) -> float:
        """Best of five batches (as timeit advises: the rest of a loaded machine only ever adds)."""
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(count // 5):
                fn()
            best = min(best, (time.perf_counter() - started) / (count // 5) * 1e6)
        return best

    async def run() -> None:
        hooks = RequestHooks()
        ctx = ConnectionContext("outbound", ("127.0.0.1", 40000), ("127.0.0.1", 4140), None)
        request = Request(b"GET", b"/api/products/1?x=1", "web.shop.svc.cluster.local:80",
                          [(b"host", b"web.shop.svc.cluster.local:80"), (b"user-agent", b"wrk"), (b"accept", b"*/*")])
        endpoint = Endpoint("127.0.0.1", 8080)
        empty = per_call(lambda: hooks.observers and None, n)
        hub = TapHub(hooks.observers)
        sub = hub.subscribe(NullTransport(), TapFilter(max_rps=100), "bench")
        sub.bucket.rate, sub.bucket.capacity, sub.bucket.tokens = 1e-9, 1.0, 0.0  # nothing admitted
        announce = per_call(lambda: hooks.announce(ctx, request, endpoint, None, 0.0), n)
        from meshctl_proxy.hooks import RequestMeta

        m = RequestMeta(id=1, direction="outbound", protocol="HTTP/1.1", src=("127.0.0.1", 40000),
                        dst=("127.0.0.1", 8080), tls=False, client_id=None, server_id=None, method="GET",
                        scheme="http", authority="web.shop.svc.cluster.local:80", path="/api/products/1", route=None,
                        header_names=("host", "user-agent", "accept"))
        hub_only = per_call(lambda: hub.on_request(m), n)
        sub.bucket.rate, sub.bucket.capacity, sub.bucket.tokens = 1e12, 1e12, 1e12  # everything admitted
        sub.capacity = 10 ** 9

        def tapped():
            watch = hub.on_request(m)
            watch.on_response(200, 0.001)
            watch.on_end(grpc_status=None, error=None, duration_s=0.002, response_bytes=12)
            if len(sub.pending) > 1000:
                sub.pending.clear()

        tapped_us = per_call(tapped, n // 4)
        print(f"no observer: the emptiness check          {empty:6.2f} us")
        print(f"hub registered, request not tapped:        {announce:6.2f} us (hooks.announce, RequestMeta included)")
        print(f"  of which TapHub.on_request:              {hub_only:6.2f} us")
        print(f"a tapped request (req, rsp, end encoded):  {tapped_us:6.2f} us")

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--before", default=None, help="git revision of the proxy before tap (default: found in history)")
    ap.add_argument("--micro", action="store_true", help="only the in-process per-request figures")
    args = ap.parse_args()
    if args.micro:
        micro()
        return
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_tap: {tool} is not installed (see scripts/apt-packages.txt)")
    before = args.before or default_before()
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tap-"))
    subscribers: list[Subscriber] = []
    try:
        before_src = extract(before, tmp)
        up1, up2 = free_port(), free_port()
        start_nginx(procs, tmp, up1, up2)
        targets = []
        for name, src in (("before", before_src), ("tap, no subscriber", ROOT / "src"),
                          ("tap, 1 subscriber @100 rps", ROOT / "src"), ("tap, 1 subscriber @all", ROOT / "src")):
            ports = dict(outbound=free_port(), admin=free_port(), control=free_port())
            p = start_proxy(procs, src, **ports)
            targets.append((name, ports, p))
        time.sleep(1.0)
        subscribers.append(Subscriber(targets[2][1]["control"], 100))
        subscribers.append(Subscriber(targets[3][1]["control"], 100_000))
        runs = interleaved([(name, p.pid, partial(run_wrk, ports["outbound"], f"127.0.0.1:{up1}",
                                                   connections=args.connections, duration=args.duration))
                            for name, ports, p in targets], args.rounds)
        results = {name: [(r["rps"], r["requests"] / cpu if cpu else 0.0) for r, cpu in rs] for name, rs in runs.items()}
        print(f"bench_tap: {args.rounds} rounds x {args.duration:g} s, wrk -t1 -c{args.connections}, "
              f"before = {before}")
        print(f"{'proxy':<28} {'req/s (median)':>15} {'runs':>36} {'req per CPU s':>14}")
        base = statistics.median(r for r, _ in results["before"])
        for name, runs in results.items():
            rps = statistics.median(r for r, _ in runs)
            per_core = statistics.median(c for _, c in runs)
            print(f"{name:<28} {rps:>15.0f} {' '.join(f'{r:.0f}' for r, _ in runs):>36} {per_core:>14.0f}"
                  f"   ({(rps / base - 1) * 100:+.1f}% vs before)")
        total_s = args.rounds * args.duration
        print(f"requests tapped: @100 rps {subscribers[0].requests} ({subscribers[0].requests / total_s:.0f}/s of its "
              f"runs), @all {subscribers[1].requests} ({subscribers[1].requests / total_s:.0f}/s)")
    finally:
        for s in subscribers:
            s.close()
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
