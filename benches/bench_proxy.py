"""meshctl-proxy against its baselines, side by side in one run, on loopback only.

Targets, each fronting the same nginx (one worker, a 12-byte response):

- direct: the client talks to nginx;
- meshctl x1: through one meshctl-proxy (outbound listener, routed by Host);
- meshctl x2: through two, as in a mesh: client-side outbound -> server-side inbound;
- haproxy: one HAProxy thread configured as the equivalent reverse proxy (keep-alive, pooled).

Measured per target: closed-loop throughput with wrk (HTTP/1.1) and h2load
(HTTP/2, prior knowledge), requests per second per proxy core (requests /
proxy CPU seconds, from /proc), latency at a fixed 1,000 req/s over HTTP/1.1
and over HTTP/2 (a paced open-loop client of our own, httptools or libnghttp2
through ngh2: wrk2 is not in Debian, h2load --rps prints no percentiles; the
targets take turns in 1 s slices so machine noise falls on all alike), and
proxy RSS idle and under load.  On a machine others are loading, run the
latency alone under SCHED_FIFO (``chrt -f 10 python benches/bench_proxy.py
--latency-only``: every process it starts inherits the policy; the paced
load sleeps between requests, so nothing else starves), or the direct
path's own p99 is tens of milliseconds of other people's work.

    python benches/bench_proxy.py                   # defaults: 5 s per run, 3 repeats
    python benches/bench_proxy.py --duration 3 --repeat 1 --no-h2
    python benches/bench_proxy.py --duration 3 --repeat 5 --no-h1 --before /tmp/old/src   # HTTP/2 A/B
    python benches/bench_proxy.py --latency-only --duration 10 --repeat 3
    python benches/bench_proxy.py --metrics         # hand-written counters vs prometheus_client
    python benches/bench_proxy.py --before /tmp/old/src   # also "meshctl x1/x2 before", run from that
                                                          # source tree, in the same rounds (A/B)

Needs wrk, h2load (nghttp2-client), haproxy and nginx (scripts/apt-packages.txt).
Every load is bounded in time; every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = "hello world\n"
# Paced latency runs are cut into slices of this many seconds, targets taking turns.
LATENCY_SLICE_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of *pid* so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Procs:
    """Processes started by the benchmark; all stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args, **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def start_nginx(procs: Procs, tmp: Path, h1: int, h2: int) -> subprocess.Popen:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  http2_max_requests 10000000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{h1}; location / {{ return 200 "{BODY.strip()}\\n"; }} }}
  server {{ listen 127.0.0.1:{h2} http2; location / {{ return 200 "{BODY.strip()}\\n"; }} }}
}}
""")
    p = procs.start(["nginx", "-c", str(conf)])
    wait_port(h1)
    wait_port(h2)
    return p


def start_haproxy(procs: Procs, tmp: Path, h1: int, h2: int, up1: int, up2: int) -> subprocess.Popen:
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend h1
  bind 127.0.0.1:{h1}
  default_backend nginx_h1
frontend h2
  bind 127.0.0.1:{h2} proto h2
  default_backend nginx_h2
backend nginx_h1
  server s1 127.0.0.1:{up1}
backend nginx_h2
  server s1 127.0.0.1:{up2} proto h2
""")
    p = procs.start(["haproxy", "-f", str(conf), "-db"])
    wait_port(h1)
    wait_port(h2)
    return p


PROXY_LAUNCH = """
import os, sys
from meshctl_proxy import config
from meshctl_proxy.model import Endpoint
from meshctl_proxy.policy.router import DirectRouter
from meshctl_proxy.transport.server import run

class ForwardTo(DirectRouter):
    # The client-side proxy of a mesh: every request to the server-side proxy's inbound listener.
    def select(self, target):
        return Endpoint("127.0.0.1", int(os.environ["BENCH_FORWARD_PORT"]))

seams = {"outbound_router": ForwardTo()} if os.environ.get("BENCH_FORWARD_PORT") else {}
sys.exit(run(config.load(os.environ), **seams))
"""


def start_proxy(procs: Procs, *, outbound: int, inbound: int, admin: int, forward: int | None = None,
                src: Path = ROOT / "src"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_PROXY_")}
    env.update({
        "PYTHONPATH": str(src),
        "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": f"127.0.0.1:{outbound}",
        "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": f"127.0.0.1:{inbound}",
        "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": f"127.0.0.1:{admin}",
        "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
        "MESHCTL_PROXY_IDENTITY_DISABLED": "true",
        "MESHCTL_PROXY_LOG_LEVEL": "warn",
    })
    if forward:
        env["BENCH_FORWARD_PORT"] = str(forward)
    p = procs.start([sys.executable, "-c", PROXY_LAUNCH], env=env)
    wait_port(outbound)
    wait_port(inbound)
    return p


# -- load generators -----------------------------------------------------------------

def run_wrk(port: int, host: str, *, connections: int, duration: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-H", f"Host: {host}",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "requests": total, "errors": int(errors.group(1)) if errors else 0}


def run_h2load(port: int, authority: str, *, connections: int, duration: float) -> dict:
    out = subprocess.run(["h2load", "-c", str(connections), "-m", "10", "-D", str(int(duration)),
                          "-H", f":authority: {authority}", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    return {"rps": float(m.group(1)) if m else 0.0, "requests": int(done.group(2)) if done else 0,
            "errors": int(done.group(1)) - int(done.group(2)) if done else 0}


async def _paced(port: int, host: str, rate: int, duration: float, conns: int) -> list[float]:
    """Open-loop: requests start on a fixed schedule; latency from send to full response, in ms."""
    import httptools

    loop = asyncio.get_running_loop()
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    latencies: list[float] = []
    idle: list = []

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.sent = 0.0

        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            latencies.append((time.perf_counter() - self.sent) * 1000)
            idle.append(self)

        def send(self) -> None:
            self.sent = time.perf_counter()
            self.transport.write(request)

    for _ in range(conns):
        _t, c = await loop.create_connection(Client, "127.0.0.1", port)
        idle.append(c)
    for _ in range(50):  # warm the path (pools, caches)
        c = idle.pop()
        c.send()
        while not idle:
            await asyncio.sleep(0.001)
    await _on_schedule(rate, duration, latencies, lambda _i: idle.pop() if idle else None)
    return latencies


async def _on_schedule(rate: int, duration: float, latencies: list[float], client_for) -> None:
    """Start ``rate * duration`` requests on a fixed schedule (open loop), then wait up to 5 s for
    their latencies.  ``client_for(i)``: the client to send request *i* on, None if none is free now."""
    latencies.clear()
    total = int(rate * duration)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due and (client := client_for(sent)) is not None:
            client.send()
            sent += 1
        await asyncio.sleep(0.0005)
    deadline = time.perf_counter() + 5
    while len(latencies) < total and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)


def run_paced(port: int, host: str, *, rate: int, duration: float, conns: int = 16) -> list[float]:
    import uvloop

    return uvloop.run(_paced(port, host, rate, duration, conns))


async def _paced_h2(port: int, authority: str, rate: int, duration: float, conns: int) -> list[float]:
    """The paced client over HTTP/2 (prior knowledge, libnghttp2 through ngh2): requests start on a
    fixed schedule, spread over *conns* connections as streams; latency from send to END_STREAM, in ms."""
    import ngh2
    from ngh2 import DataReceived, ResponseReceived, Role, StreamReset

    loop = asyncio.get_running_loop()
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority.encode()), (b":path", b"/")]
    latencies: list[float] = []

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.conn = ngh2.Connection(Role.CLIENT)
            self.started: dict[int, float] = {}
            self.transport = None

        def connection_made(self, transport) -> None:
            self.transport = transport
            self.conn.initiate_connection({ngh2.Setting.ENABLE_PUSH: 0})
            transport.write(self.conn.data_to_send())

        def data_received(self, data: bytes) -> None:
            conn = self.conn
            conn.receive_data(data)
            now = time.perf_counter()
            for ev in conn.events():
                t = type(ev)
                if (t is DataReceived or t is ResponseReceived) and ev.end_stream or t is StreamReset:
                    sent = self.started.pop(ev.stream_id, None)
                    if sent is not None:
                        latencies.append((now - sent) * 1000)
            out = conn.data_to_send()
            if out:
                self.transport.write(out)

        def send(self) -> None:
            sid = self.conn.send_request(head, end_stream=True)
            self.started[sid] = time.perf_counter()
            self.transport.write(self.conn.data_to_send())

    clients = []
    for _ in range(conns):
        _t, c = await loop.create_connection(Client, "127.0.0.1", port)
        clients.append(c)
    for i in range(50):  # warm the path (pools, caches)
        clients[i % conns].send()
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    await _on_schedule(rate, duration, latencies, lambda i: clients[i % conns])
    for c in clients:
        c.transport.close()
    return latencies


def run_paced_h2(port: int, authority: str, *, rate: int, duration: float, conns: int = 4) -> list[float]:
    import uvloop

    return uvloop.run(_paced_h2(port, authority, rate, duration, conns))


def latency_summary(lat: list[float]) -> dict:
    q = statistics.quantiles(sorted(lat), n=100, method="inclusive")
    return {"p50": q[49], "p99": q[98], "n": len(lat)}


# -- the run ---------------------------------------------------------------------------

def bench(args) -> None:
    for tool in ("wrk", "h2load", "haproxy", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_proxy: {tool} is not installed (see scripts/apt-packages.txt)")
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    try:
        up1, up2 = free_port(), free_port()
        start_nginx(procs, tmp, up1, up2)
        hp1, hp2 = free_port(), free_port()
        haproxy = start_haproxy(procs, tmp, hp1, hp2, up1, up2)
        # One hop: routed by Host on the outbound listener (ingress mode).
        one = dict(outbound=free_port(), inbound=free_port(), admin=free_port())
        p1 = start_proxy(procs, **one)
        # Two hops: client side forwards everything to the server side's inbound listener,
        # which forwards to the Host's port on 127.0.0.1.
        b = dict(outbound=free_port(), inbound=free_port(), admin=free_port())
        pb = start_proxy(procs, **b)
        a = dict(outbound=free_port(), inbound=free_port(), admin=free_port())
        pa = start_proxy(procs, **a, forward=b["inbound"])
        time.sleep(1.0)
        idle_rss = rss_mb(p1.pid)

        h1_targets = [("direct", up1, []), ("meshctl x1", one["outbound"], [p1]),
                      ("meshctl x2", a["outbound"], [pa, pb]), ("haproxy", hp1, [haproxy])]
        h2_targets = [("direct", up2, []), ("meshctl x1", one["outbound"], [p1]),
                      ("meshctl x2", a["outbound"], [pa, pb]), ("haproxy", hp2, [haproxy])]
        if args.before:
            # The same two set-ups from another source tree, measured in the same rounds (A/B).
            src = Path(args.before)
            one_b = dict(outbound=free_port(), inbound=free_port(), admin=free_port())
            p1_b = start_proxy(procs, **one_b, src=src)
            b_b = dict(outbound=free_port(), inbound=free_port(), admin=free_port())
            pb_b = start_proxy(procs, **b_b, src=src)
            a_b = dict(outbound=free_port(), inbound=free_port(), admin=free_port())
            pa_b = start_proxy(procs, **a_b, forward=b_b["inbound"], src=src)
            time.sleep(1.0)
            for targets in (h1_targets, h2_targets):
                targets[3:3] = [("meshctl x1 before", one_b["outbound"], [p1_b]),
                                ("meshctl x2 before", a_b["outbound"], [pa_b, pb_b])]
        results: dict = {}
        load_rss: list[float] = []

        def measure(kind: str, name: str, port: int, pids: list, host: str, fn):
            before = [cpu_split(p.pid) for p in pids]
            r = fn(port, host)
            after = [cpu_split(p.pid) for p in pids]
            user = sum(a[0] - b[0] for a, b in zip(after, before))
            system = sum(a[1] - b[1] for a, b in zip(after, before))
            cpu = user + system
            r["per_core"] = r["requests"] / cpu if cpu > 0 else None
            r["cpu"] = cpu
            # Where a request's CPU goes: the proxy's own code (user) and the kernel's socket work (sys).
            r["user_us"] = user / r["requests"] * 1e6 if r["requests"] else None
            r["sys_us"] = system / r["requests"] * 1e6 if r["requests"] else None
            results.setdefault((kind, name), []).append(r)
            return r

        for rep in range(args.repeat):
            for name, port, pids in ([] if args.latency_only or args.no_h1 else h1_targets):
                host_hdr = f"127.0.0.1:{up1}"
                if name == "meshctl x1" and rep == 0:
                    # RSS under load: sampled in the middle of a wrk run.
                    import threading

                    t = threading.Timer(args.duration / 2, lambda: load_rss.append(rss_mb(p1.pid)))
                    t.start()
                measure("h1", name, port, pids, host_hdr,
                        lambda pt, h: run_wrk(pt, h, connections=args.connections, duration=args.duration))
            if not (args.no_h2 or args.latency_only):
                for name, port, pids in h2_targets:
                    measure("h2", name, port, pids, f"127.0.0.1:{up2}",
                            lambda pt, h: run_h2load(pt, h, connections=args.connections // 4 or 1,
                                                     duration=args.duration))
            # Latency: the targets take turns in short slices, so a burst of noise from the
            # rest of the machine falls on all of them alike instead of on one target's run.
            slices = max(1, round(args.duration / LATENCY_SLICE_S))
            pooled: dict[str, list[float]] = {name: [] for name, _p, _ in h1_targets}
            for _ in range(slices):
                for name, port, _pids in h1_targets:
                    pooled[name] += run_paced(port, f"127.0.0.1:{up1}", rate=args.rate,
                                              duration=args.duration / slices)
            for name, lat in pooled.items():
                results.setdefault(("paced", name), []).append(latency_summary(lat))
            if not args.no_h2:
                pooled = {name: [] for name, _p, _ in h2_targets}
                for _ in range(slices):
                    for name, port, _pids in h2_targets:
                        pooled[name] += run_paced_h2(port, f"127.0.0.1:{up2}", rate=args.rate,
                                                     duration=args.duration / slices)
                for name, lat in pooled.items():
                    results.setdefault(("paced-h2", name), []).append(latency_summary(lat))
        report(results, idle_rss, load_rss, args)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


NAMES = ("direct", "meshctl x1", "meshctl x2", "meshctl x1 before", "meshctl x2 before", "haproxy")
HOPS = {"direct": 0, "meshctl x1": 1, "meshctl x2": 2, "meshctl x1 before": 1, "meshctl x2 before": 2, "haproxy": 1}


def _fmt_runs(values, fmt="{:.0f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    spread = f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else ""
    return fmt.format(med) + spread


def report(results: dict, idle_rss: float, load_rss: list[float], args) -> None:
    print(f"\n# bench_proxy: {args.repeat} run(s) x {args.duration:g}s, {args.connections} connections, "
          f"{os.cpu_count()} CPUs; median (min-max)\n")
    for kind, tool in (("h1", "wrk, HTTP/1.1"), ("h2", "h2load, HTTP/2")):
        if not any(k == kind for k, _ in results):
            continue
        print(f"## throughput ({tool})\n")
        print("| target | req/s | proxy CPU-s | req/s per proxy core | CPU us/req user + sys | errors |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in NAMES:
            runs = results.get((kind, name), [])
            if not runs:
                continue
            proxied = name != "direct"
            users = [r["user_us"] for r in runs if r["user_us"] is not None]
            systems = [r["sys_us"] for r in runs if r["sys_us"] is not None]
            split = (f"{statistics.median(users):.1f} + {statistics.median(systems):.1f}"
                     if proxied and users and systems else "-")
            print(f"| {name} | {_fmt_runs([r['rps'] for r in runs])} | "
                  f"{_fmt_runs([r['cpu'] for r in runs], '{:.2f}') if proxied else '-'} | "
                  f"{_fmt_runs([r['per_core'] for r in runs]) if proxied else '-'} | {split} | "
                  f"{sum(r['errors'] for r in runs)} |")
        mesh = statistics.median([r["per_core"] for r in results[(kind, "meshctl x1")] if r["per_core"]])
        ha = statistics.median([r["per_core"] for r in results[(kind, "haproxy")] if r["per_core"]])
        mesh_rps = statistics.median([r["rps"] for r in results[(kind, "meshctl x1")]])
        ha_rps = statistics.median([r["rps"] for r in results[(kind, "haproxy")]])
        print(f"\nmeshctl / haproxy: req/s per core {mesh / ha:.0%}, req/s {mesh_rps / ha_rps:.0%}\n")
    for kind, proto in (("paced", "HTTP/1.1"), ("paced-h2", "HTTP/2")):
        if (kind, "direct") not in results:
            continue
        print(f"## latency at {args.rate} req/s (paced client, {proto}; ms)\n")
        print("| target | p50 | p99 | added p50 | added p99 | added p99 per hop |")
        print("| --- | --- | --- | --- | --- | --- |")
        base50 = statistics.median([r["p50"] for r in results[(kind, "direct")]])
        base99 = statistics.median([r["p99"] for r in results[(kind, "direct")]])
        for name in NAMES:
            hops = HOPS[name]
            runs = results.get((kind, name))
            if not runs:
                continue
            p50 = statistics.median([r["p50"] for r in runs])
            p99 = statistics.median([r["p99"] for r in runs])
            per_hop = f"{(p99 - base99) / hops:.3f}" if hops else "-"
            print(f"| {name} | {_fmt_runs([r['p50'] for r in runs], '{:.3f}')} | "
                  f"{_fmt_runs([r['p99'] for r in runs], '{:.3f}')} | {p50 - base50:+.3f} | {p99 - base99:+.3f} | "
                  f"{per_hop} |")
        print()
    loaded = f"{max(load_rss):.1f} MiB" if load_rss else "not measured (no throughput run)"
    print(f"\n## memory (meshctl x1)\n\nRSS idle {idle_rss:.1f} MiB; under load {loaded}\n")


def bench_metrics() -> None:
    """The hot-path cost of counting one request: hand-written counters vs prometheus_client."""
    import timeit

    from meshctl_proxy.telemetry.metrics import Metrics

    m = Metrics(pod_labels={"namespace": "ns", "pod": "p"})
    n = 200_000

    def ours():
        s = m.http("outbound", "web:80", "10.0.0.1:80", "true")
        s.requests += 1
        s.response(200, "success", 0.7)

    t_ours = timeit.timeit(ours, number=n) / n * 1e6
    import prometheus_client as pc

    reg = pc.CollectorRegistry()
    labels = ["direction", "authority", "target_addr", "tls"]
    req = pc.Counter("request_total", "", labels, registry=reg)
    resp = pc.Counter("response_total", "", labels + ["classification", "status_code"], registry=reg)
    lat = pc.Histogram("response_latency_ms", "", labels + ["status_code"], registry=reg,
                       buckets=(1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000,
                                5000, 10000, 20000, 30000, 40000, 50000))

    def theirs():
        req.labels("outbound", "web:80", "10.0.0.1:80", "true").inc()
        resp.labels("outbound", "web:80", "10.0.0.1:80", "true", "success", "200").inc()
        lat.labels("outbound", "web:80", "10.0.0.1:80", "true", "200").observe(0.7)

    t_theirs = timeit.timeit(theirs, number=n) / n * 1e6
    print(f"per request: hand-written {t_ours:.2f} us, prometheus_client {t_theirs:.2f} us "
          f"(x{t_theirs / t_ours:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per load run (default 5)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per target (default 3)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (h2load uses a quarter, x10 streams)")
    ap.add_argument("--rate", type=int, default=1000, help="paced latency run: requests per second (default 1000)")
    ap.add_argument("--no-h2", action="store_true", help="skip the HTTP/2 runs")
    ap.add_argument("--no-h1", action="store_true", help="skip the HTTP/1.1 throughput runs (the paced latency "
                    "runs, HTTP/1.1, still run)")
    ap.add_argument("--latency-only", action="store_true", help="only the paced latency runs (and RSS idle)")
    ap.add_argument("--metrics", action="store_true", help="only the metrics hot-path micro-benchmark")
    ap.add_argument("--before", metavar="SRC", help="also run meshctl x1/x2 from this source tree (the src/ of "
                    "another checkout), in the same rounds: a before/after comparison on one loaded machine")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.metrics:
        bench_metrics()
        return
    bench(args)


if __name__ == "__main__":
    main()
