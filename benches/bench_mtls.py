"""What mTLS costs: handshakes, records, and the two-proxy path with and without it, in one run.

    python benches/bench_mtls.py [--seconds 6] [--connections 16] [--rounds 2] [--handshakes 400]
                                 [--echo-round-trips 32000]

1. Handshakes per second per core, both sides in one process on one core:
   - baseline: a plain Python ``ssl`` TLS 1.3 handshake (server certificate
     only, P-256, ``create_default_context`` with hostname check);
   - mesh: what two proxies do (both certificates, the client's
     ``MeshConnector`` path: ``tls_transport.connect`` and the SAN identity
     check; the server's termination after detection read the ClientHello).
2. The record path alone: CPU per echo round trip of a 180-byte message over
   16 connections, both ends in one process (steady even on a shared
   machine): plaintext, uvloop's own SSL transport at both ends, and
   ``tls_stream`` at both ends (what the proxies run).
3. The two-proxy path, ``wrk`` -> proxy A (outbound) -> proxy B (inbound) ->
   a small HTTP server, each proxy its own process on loopback, once with
   plaintext between the proxies and once with mTLS.  Connections between the
   proxies are pooled, so mTLS costs encryption, not handshakes.

Only loopback is used.  Every phase is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from meshctl.identity import certs  # noqa: E402
from meshctl_proxy.identity import tls_contexts
from meshctl_proxy.identity import tls_transport  # noqa: E402
from meshctl_proxy.identity.tls_transport import TlsTransport  # noqa: E402

SERVER = "b.bench.serviceaccount.identity.meshctl.cluster.local"
CLIENT = "a.bench.serviceaccount.identity.meshctl.cluster.local"


def write_leaf(directory: Path, issuer: certs.KeyPair, name: str) -> tuple[str, str, str]:
    key = certs.new_private_key()
    leaf = certs.issue_leaf(issuer, public_key=key.public_key(), dns_name=name)
    chain = certs.cert_to_pem(leaf) + issuer.cert_pem
    (directory / f"{name}.crt").write_text(chain)
    (directory / f"{name}.key").write_text(certs.key_to_pem(key))
    return chain, str(directory / f"{name}.crt"), str(directory / f"{name}.key")


# --- 1. handshakes ------------------------------------------------------------------

async def _handshakes(n: int, *, server_ctx, client_ctx, server_hostname: str, mesh: bool) -> float:
    """CPU seconds for *n* sequential handshakes, both sides in this process."""
    done = asyncio.Queue()

    class Terminate(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buf = transport, b""

        def data_received(self, data):
            self.buf += data
            if isinstance(tls_contexts.parse_client_hello(self.buf), tls_contexts.ClientHello):
                self.transport.pause_reading()
                asyncio.ensure_future(self.finish())

        async def finish(self):
            t = TlsTransport(server_ctx, server_side=True, raw=self.transport)
            self.transport.resume_reading()
            sslobj = await t.handshake(self.buf, timeout=10)
            tls_contexts.peer_identity(sslobj)
            t.start(asyncio.Protocol())
            t.write(b"x")
            await done.put(None)

    loop = asyncio.get_running_loop()
    if mesh:
        server = await loop.create_server(Terminate, "127.0.0.1", 0)
    else:
        async def on_conn(reader, writer):
            writer.write(b"x")
            await done.put(None)

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    start = time.process_time()
    class OneByte(asyncio.Protocol):
        def __init__(self):
            self.got = loop.create_future()

        def data_received(self, data):
            if not self.got.done():
                self.got.set_result(data)

    for _ in range(n):
        if mesh:  # what MeshConnector does: tls_transport.connect, then the SAN identity check
            transport, proto = await tls_transport.connect(OneByte, "127.0.0.1", port, client_ctx,
                                                        server_hostname=server_hostname, handshake_timeout=10)
            tls_contexts.verify_peer_identity(transport.get_extra_info("ssl_object"), server_hostname)
            await proto.got
            await done.get()
            transport.close()
            continue
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname)
        await reader.readexactly(1)
        await done.get()
        writer.close()
    cpu = time.process_time() - start
    server.close()
    return cpu


def bench_handshakes(n: int, workdir: Path, anchor: certs.KeyPair, issuer: certs.KeyPair) -> dict:
    _, s_cert, s_key = write_leaf(workdir, issuer, SERVER)
    _, c_cert, c_key = write_leaf(workdir, issuer, CLIENT)
    # Baseline: what a plain Python HTTPS client and server do.
    base_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    base_server.minimum_version = ssl.TLSVersion.TLSv1_3
    base_server.load_cert_chain(s_cert, s_key)
    base_client = ssl.create_default_context(cadata=anchor.cert_pem)
    base_client.minimum_version = ssl.TLSVersion.TLSv1_3
    # Python's hostname check matches the SAN as a DNS name, which works for the baseline.
    mesh_server = tls_contexts.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=s_cert, key_file=s_key)
    mesh_client = tls_contexts.client_context(trust_anchors_pem=anchor.cert_pem, cert_file=c_cert, key_file=c_key)
    out = {}
    for name, kw in (("python_ssl_baseline", dict(server_ctx=base_server, client_ctx=base_client, mesh=False)),
                     ("mesh_mtls", dict(server_ctx=mesh_server, client_ctx=mesh_client, mesh=True))):
        asyncio.run(_handshakes(20, server_hostname=SERVER, **kw))  # warm up
        cpu = asyncio.run(_handshakes(n, server_hostname=SERVER, **kw))
        out[name] = {"handshakes": n, "cpu_s": round(cpu, 3), "per_handshake_both_sides_ms": round(cpu / n * 1000, 3),
                     "handshakes_per_s_per_core": round(n / cpu, 1)}
    out["mesh_vs_baseline_cost"] = round(out["mesh_mtls"]["cpu_s"] / out["python_ssl_baseline"]["cpu_s"], 2)
    return out


# --- 2. the record path alone, in-process ---------------------------------------------------

class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class _PingPong(asyncio.Protocol):
    """Sends MSG, waits for it back, *left* times."""

    MSG = b"x" * 180  # about a proxied request head

    def connection_made(self, transport):
        self.transport, self.left, self.done = transport, 0, None

    def data_received(self, data):
        self.left -= 1
        if self.left > 0:
            self.transport.write(self.MSG)
        else:
            self.done.set_result(None)


class _TerminateThenEcho(asyncio.Protocol):
    """The proxy's inbound side: the first bytes are the ClientHello, terminated by TlsTransport."""

    def __init__(self, server_ctx, tasks):
        self.server_ctx, self.tasks = server_ctx, tasks

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.pause_reading()
        task = asyncio.ensure_future(self._terminate(data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _terminate(self, prefix):
        t = TlsTransport(self.server_ctx, server_side=True, raw=self.transport)
        self.transport.resume_reading()
        await t.handshake(prefix, timeout=10)
        t.start(_Echo())


async def _echo_cpu_us(mode: str, server_ctx, client_ctx, *, round_trips: int, connections: int = 16) -> float:
    """CPU per echo round trip, both ends in this process: what the record path costs, steady under load."""
    loop = asyncio.get_running_loop()
    tasks: set = set()
    if mode == "tls_stream":
        server = await loop.create_server(lambda: _TerminateThenEcho(server_ctx, tasks), "127.0.0.1", 0)
    else:
        server = await loop.create_server(_Echo, "127.0.0.1", 0, ssl=server_ctx if mode == "uvloop_ssl" else None)
    port = server.sockets[0].getsockname()[1]
    clients = []
    for _ in range(connections):
        if mode == "tls_stream":
            _, p = await tls_transport.connect(_PingPong, "127.0.0.1", port, client_ctx, server_hostname=SERVER,
                                            handshake_timeout=10)
        elif mode == "uvloop_ssl":
            _, p = await loop.create_connection(_PingPong, "127.0.0.1", port, ssl=client_ctx, server_hostname=SERVER)
        else:
            _, p = await loop.create_connection(_PingPong, "127.0.0.1", port)
        clients.append(p)

    async def run(per_connection: int) -> None:
        for c in clients:
            c.left, c.done = per_connection, loop.create_future()
            c.transport.write(c.MSG)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 60)

    await run(100)  # warm up
    start = time.process_time()
    await run(round_trips // connections)
    cpu = time.process_time() - start
    for c in clients:
        c.transport.close()
    server.close()
    return cpu / (round_trips // connections * connections) * 1e6


def bench_records(round_trips: int, workdir: Path, anchor: certs.KeyPair, issuer: certs.KeyPair,
                  *, rounds: int = 3) -> dict:
    """plaintext vs uvloop's SSL transport (both ends) vs tls_stream (both ends, as the proxies run)."""
    import uvloop

    _, s_cert, s_key = write_leaf(workdir, issuer, SERVER)
    _, c_cert, c_key = write_leaf(workdir, issuer, CLIENT)
    server_ctx = tls_contexts.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=s_cert, key_file=s_key)
    client_ctx = tls_contexts.client_context(trust_anchors_pem=anchor.cert_pem, cert_file=c_cert, key_file=c_key)
    runs: dict[str, list[float]] = {"plaintext": [], "uvloop_ssl": [], "tls_stream": []}
    for _ in range(rounds):  # alternating, best of each: the floor, least disturbed by other load
        for mode in runs:
            runs[mode].append(uvloop.run(_echo_cpu_us(mode, server_ctx, client_ctx, round_trips=round_trips)))
    out = {mode: {"cpu_us_per_round_trip_best": round(min(v), 2), "runs": [round(x, 2) for x in v]}
           for mode, v in runs.items()}
    for mode in ("uvloop_ssl", "tls_stream"):
        out[mode]["added_us_vs_plaintext"] = round(min(runs[mode]) - min(runs["plaintext"]), 2)
    return out


# --- 3. the two-proxy path ----------------------------------------------------------------

BACKEND = textwrap.dedent("""
    import asyncio, sys
    RESP = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\ncontent-type: text/plain\\r\\n\\r\\nok"
    class P(asyncio.Protocol):
        def connection_made(self, t): self.t, self.buf = t, b""
        def data_received(self, d):
            self.buf += d
            n = self.buf.count(b"\\r\\n\\r\\n")
            if n:
                self.buf = self.buf[self.buf.rfind(b"\\r\\n\\r\\n") + 4:]
                self.t.write(RESP * n)
    async def main():
        s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
        print("ready", flush=True)
        await asyncio.sleep(600)
    import uvloop; uvloop.run(main())
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def run_wrk(url: str, *, seconds: float, connections: int, host: str, threads: int = 1) -> dict:
    # wrk's latency summary: p50/p99 from --latency; one thread keeps a core for the proxies.
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-H", f"Host: {host}",
                        url], capture_output=True, text=True, timeout=seconds + 30)
    text = r.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise RuntimeError(f"wrk failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    rps = float(m.group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock_err = re.search(r"Socket errors: (.*)", text)

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", text, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {"rps": rps, "requests": total, "p50_ms": pct(50), "p99_ms": pct(99), "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1) if sock_err else ""}


# A proxy process whose outbound side sends everything to one endpoint (with or without an
# expected identity), so the bench measures the data path and mTLS, not discovery.
PROXY = textwrap.dedent("""
    import os, sys
    from meshctl_proxy import config
    from meshctl_proxy.transport import server
    from meshctl_proxy.model import Endpoint
    from meshctl_proxy.policy.router import DirectRouter
    host, port, identity = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
    # One Endpoint object, as the balancer hands out the same ones from its set (a new one per
    # request would defeat the per-connection caches keyed by endpoint identity).
    ENDPOINT = Endpoint(host, port, identity)
    class Static(DirectRouter):
        def select(self, target):
            return ENDPOINT
    sys.exit(server.run(config.load(os.environ), outbound_router=Static()))
""")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv, env=None, *, wait_line: str | None = None) -> tuple[subprocess.Popen, str]:
        p = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = ""
        if wait_line:
            stream = p.stdout if wait_line == "ready" else p.stderr
            line = stream.readline()
            if wait_line not in line:
                raise RuntimeError(f"{argv[:4]} did not start: {line!r} {p.stderr.read()[:1000] if p.poll() is not None else ''}")
        return p, line

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()


def _addrs(line: str) -> dict[str, int]:
    return {name: int(port) for name, port in re.findall(r"(\w+)=[\d.]+:(\d+)", line)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_pair(procs: Procs, workdir: Path, backend_port: int, *, mtls: bool, svc_port: int | None) -> dict:
    """Proxy B (inbound, in front of the backend) and proxy A (outbound, to B); returns their ports."""
    base = {"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
            "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_LOG_LEVEL": "warn"}

    def env_for(name: str, identity: str) -> dict:
        if not mtls:
            return {**base, "MESHCTL_PROXY_IDENTITY_DISABLED": "true"}
        from meshctl.identity import tokens

        token_file = workdir / f"token-{name}"
        token_file.write_text(tokens.add_token(str(workdir / "tokens.json"), namespace="bench", service_account=name))
        return {**base, "MESHCTL_PROXY_IDENTITY_TRUST_ANCHORS": (workdir / "ca.crt").read_text(),
                "MESHCTL_PROXY_IDENTITY_SVC_ADDR": f"127.0.0.1:{svc_port}",
                "MESHCTL_PROXY_IDENTITY_SVC_NAME": "meshctl-identity.meshctl.serviceaccount.identity.meshctl.cluster.local",
                "MESHCTL_PROXY_IDENTITY_TOKEN_FILE": str(token_file), "MESHCTL_PROXY_IDENTITY_LOCAL_NAME": identity,
                "MESHCTL_PROXY_IDENTITY_DIR": str(workdir / f"id-{name}-{time.monotonic_ns()}")}

    _, line_b = procs.start([sys.executable, "-c", PROXY, "127.0.0.1", str(backend_port), ""], env_for("b", SERVER),
                            wait_line="listening")
    b = _addrs(line_b)
    b_proc = procs.procs[-1]
    _, line_a = procs.start([sys.executable, "-c", PROXY, "127.0.0.1", str(b["inbound"]), SERVER if mtls else ""],
                            env_for("a", CLIENT), wait_line="listening")
    a = _addrs(line_a)
    for admin in (a["admin"], b["admin"]):  # ready = listening and, with mTLS, certified
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", admin), timeout=1) as s:
                    s.sendall(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    if s.recv(100).startswith(b"HTTP/1.1 200"):
                        break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"proxy with admin port {admin} never became ready")
    return {"a": a, "b": b, "pids": (procs.procs[-1].pid, b_proc.pid)}


def bench_path(workdir: Path, *, seconds: float, connections: int, rounds: int) -> dict:
    procs = Procs()
    results: dict[str, list] = {"plaintext": [], "mtls": []}
    try:
        backend_port = free_port()
        procs.start([sys.executable, "-c", BACKEND, str(backend_port)], wait_line="ready")
        (workdir / "tokens.json").write_text('{"tokens": []}')
        _, line = procs.start([sys.executable, "-m", "meshctl", "identity", "serve", "--listen", "127.0.0.1:0",
                               "--trust-anchors-file", str(workdir / "ca.crt"),
                               "--issuer-certificate-file", str(workdir / "issuer.crt"),
                               "--issuer-key-file", str(workdir / "issuer.key"),
                               "--token-registry", str(workdir / "tokens.json")], wait_line="listening")
        svc_port = int(line.rsplit(":", 1)[1])
        # Alternate the modes so drift on a shared machine hits both alike.
        for _ in range(rounds):
            for mode in ("plaintext", "mtls"):
                pair_procs = Procs()
                try:
                    ports = start_pair(pair_procs, workdir, backend_port, mtls=mode == "mtls", svc_port=svc_port)
                    url = f"http://127.0.0.1:{ports['a']['outbound']}/"
                    # B's inbound forwards by the Host port (no iptables here): the backend's.
                    host = f"127.0.0.1:{backend_port}"
                    run_wrk(url, seconds=1, connections=connections, host=host)  # warm up: pools filled
                    before = [cpu_seconds(pid) for pid in ports["pids"]]
                    run = run_wrk(url, seconds=seconds, connections=connections, host=host)
                    # CPU the two proxies spent per request: unlike req/s, barely moved by
                    # other load on a shared machine, and what limits a CPU-bound sidecar.
                    spent = [cpu_seconds(pid) - b for pid, b in zip(ports["pids"], before)]
                    n = max(1, run["requests"])
                    run["proxy_cpu_us_per_request"] = sum(spent) / n * 1e6
                    run["outbound_proxy_cpu_us"], run["inbound_proxy_cpu_us"] = (round(x / n * 1e6, 1) for x in spent)
                    results[mode].append(run)
                finally:
                    pair_procs.stop()
    finally:
        procs.stop()
    summary = {}
    for mode, runs in results.items():
        best = max(runs, key=lambda r: r["rps"])
        cpu = sorted(r["proxy_cpu_us_per_request"] for r in runs)
        summary[mode] = {"rps_runs": [r["rps"] for r in runs], "rps_best": best["rps"],
                         "proxy_cpu_us_per_request_runs": [round(c, 1) for c in cpu],
                         "proxy_cpu_us_per_request_median": round(statistics.median(cpu), 1),
                         "outbound_inbound_cpu_us": [(r["outbound_proxy_cpu_us"], r["inbound_proxy_cpu_us"]) for r in runs],
                         "p50_ms": best["p50_ms"], "p99_ms": best["p99_ms"],
                         "non_2xx": sum(r["non_2xx"] for r in runs), "socket_errors": [r["socket_errors"] for r in runs]}
    summary["mtls_throughput_cost"] = round(1 - summary["mtls"]["rps_best"] / summary["plaintext"]["rps_best"], 3)
    # Throughput a CPU-bound pair of proxies loses: 1 - (plain CPU per request / mTLS CPU per request).
    summary["mtls_cpu_bound_throughput_cost"] = round(
        1 - summary["plaintext"]["proxy_cpu_us_per_request_median"] / summary["mtls"]["proxy_cpu_us_per_request_median"], 3)
    summary["mtls_added_p50_ms"] = round(summary["mtls"]["p50_ms"] - summary["plaintext"]["p50_ms"], 3)
    summary["mtls_added_p99_ms"] = round(summary["mtls"]["p99_ms"] - summary["plaintext"]["p99_ms"], 3)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6, help="wrk duration per run")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="runs per mode, alternating")
    ap.add_argument("--handshakes", type=int, default=400)
    ap.add_argument("--echo-round-trips", type=int, default=32000, help="per run of the in-process record bench")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("bench_mtls: wrk is not installed (scripts/apt-packages.txt lists it)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()  # other work on a shared machine skews req/s more than CPU per request
    with tempfile.TemporaryDirectory(prefix="bench-mtls-") as d:
        workdir = Path(d)
        anchor = certs.generate_trust_anchor()
        issuer = certs.generate_issuer(anchor)
        (workdir / "ca.crt").write_text(anchor.cert_pem)
        (workdir / "issuer.crt").write_text(issuer.cert_pem)
        (workdir / "issuer.key").write_text(issuer.key_pem)
        report = {"handshakes": bench_handshakes(args.handshakes, workdir, anchor, issuer),
                  "records_in_process": bench_records(args.echo_round_trips, workdir, anchor, issuer),
                  "two_proxy_path": bench_path(workdir, seconds=args.seconds, connections=args.connections,
                                               rounds=args.rounds),
                  "cores": os.cpu_count(), "python": sys.version.split()[0],
                  "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(report, indent=2))
    path = report["two_proxy_path"]
    print(f"mTLS throughput cost on pooled connections: {path['mtls_throughput_cost']:.1%} by best req/s, "
          f"{path['mtls_cpu_bound_throughput_cost']:.1%} by proxy CPU per request (target <= 15%); "
          f"load average {report['load_average_1m_before_after'][0]} before, "
          f"{report['load_average_1m_before_after'][1]} after", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
