"""CPU per proxied HTTP/2 request, in one process, without sockets: steadier than h2load on a shared machine.

The real protocol objects run on a real event loop (uvloop, as the proxy does):
``H2ServerConnection`` (the client-facing side) -> the real outbound router
(``TrafficRouter`` as ``Proxy.start()`` builds it, routing by ``:authority``)
-> ``H2Pool`` / ``H2ClientConnection`` (the pooled upstream side).  Only the two
ends are stand-ins that talk over in-memory transports, written to cost as
little as possible so that the figure is the proxy's:

- the client sends h2load's request (GET, the same six headers, HPACK-indexed
  after the first, exactly as h2load's encoder does) and keeps ``--streams``
  streams in flight on each of ``--connections`` connections (closed loop);
- the upstream answers every request with nginx's five response headers and
  a 12-byte body, pre-encoded.

Bytes written in one loop pass are delivered to the peer in the next (as a
socket would), so batching across streams is what it would be on loopback.
The fakes' own CPU is measured and subtracted; the result is reported as CPU
microseconds per proxied request and as requests per proxy core.

    python benches/bench_h2_cpu.py                      # 20,000 requests, 8 x 10 streams, 3 repeats
    python benches/bench_h2_cpu.py --against /path/to/other/checkout/src   # side by side, interleaved
    python benches/bench_h2_cpu.py --requests 5000 --profile   # plus a cProfile of one run (top 30)

``--against`` runs the same harness over another source tree (e.g. a
``git worktree`` of main) in alternating subprocesses and prints the ratio.

Bounded: each run stops after ``--requests`` responses (and a 60 s cap).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = os.environ.get("BENCH_H2_SRC") or str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)

import hpack  # noqa: E402

from meshctl_proxy import config  # noqa: E402
from meshctl_proxy.model import OUTBOUND, ConnectionContext  # noqa: E402

try:
    from meshctl_proxy.transport.server import Proxy  # noqa: E402
except ImportError:  # a tree from before the proxy's sub-packages (--against an older checkout)
    from meshctl_proxy.server import Proxy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from proxy.memory import MemoryTransport  # noqa: E402  (the tests' in-memory transport, peer-delivering)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
UPSTREAM = ("127.0.0.1", 8080)  # never connected to: the connector below answers in memory
AUTHORITY = b"%s:%d" % (UPSTREAM[0].encode(), UPSTREAM[1])
REQUEST_HEADERS = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", AUTHORITY),
                   (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"h2load nghttp2/1.52.0")]
RESPONSE_HEADERS = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Fri, 27 Nov 2026 16:00:00 GMT"),
                    (b"content-type", b"text/plain"), (b"content-length", b"12")]
BODY = b"hello world\n"

HEADERS, DATA, SETTINGS, WINDOW_UPDATE = 0x1, 0x0, 0x4, 0x8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


class Meter:
    """CPU seconds the stand-ins spend, to subtract from the process total."""

    fakes = 0.0


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def frames(buf: bytes, pos: int):
    """(kind, flags, sid, payload) of each whole frame from *pos*; returns them and the new position."""
    out, n = [], len(buf)
    while n - pos >= 9:
        length = int.from_bytes(buf[pos:pos + 3], "big")
        if n - pos - 9 < length:
            break
        out.append((buf[pos + 3], buf[pos + 4], int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF,
                    buf[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return out, pos


def header_blocks(headers) -> tuple[bytes, bytes]:
    """The first block (literals, indexed into the dynamic table) and every later one (all indexed)."""
    enc = hpack.Encoder()
    return enc.encode(headers), enc.encode(headers)


class FakeUpstream:
    """nginx's part: SETTINGS, then a pre-encoded 200 + 12 bytes for every request."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.buf = b""
        self.skip = len(PREFACE)
        first, later = header_blocks(RESPONSE_HEADERS)
        self.first, self.later = first, later
        self.sent_first = False
        # nginx's defaults: 128 concurrent streams, and a large window so the proxy is never stalled.
        transport.write(frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x80\x00\x04\x00\x10\x00\x00")
                        + frame(WINDOW_UPDATE, 0, 0, (1 << 30).to_bytes(4, "big")))

    def data_received(self, data: bytes) -> None:
        t0 = time.process_time()
        buf = self.buf + data
        got, pos = frames(buf, self.skip)
        self.buf, self.skip = buf[pos:], 0
        out = []
        for kind, flags, sid, _payload in got:
            if kind == HEADERS and flags & END_STREAM:
                block = self.later if self.sent_first else self.first
                self.sent_first = True
                out.append(frame(HEADERS, END_HEADERS, sid, block) + frame(DATA, END_STREAM, sid, BODY))
            elif kind == SETTINGS and not flags & ACK:
                out.append(SETTINGS_ACK)
        if out:
            self.transport.write(b"".join(out))
        Meter.fakes += time.process_time() - t0


class FakeClient:
    """h2load's part: keeps *streams* requests in flight; counts responses."""

    def __init__(self, transport: MemoryTransport, streams: int, bench: "Bench") -> None:
        self.transport = transport
        self.bench = bench
        self.buf = b""
        self.next_sid = 1
        self.first, self.later = header_blocks(REQUEST_HEADERS)
        self.sent_first = False
        self.unacked = 0
        transport.write(PREFACE + frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\xff\xff")
                        + frame(WINDOW_UPDATE, 0, 0, (1 << 30).to_bytes(4, "big")))
        self.send(streams)

    def send(self, n: int) -> None:
        out = []
        for _ in range(n):
            block = self.later if self.sent_first else self.first
            self.sent_first = True
            out.append(frame(HEADERS, END_HEADERS | END_STREAM, self.next_sid, block))
            self.next_sid += 2
        self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        t0 = time.process_time()
        self.buf += data
        got, pos = frames(self.buf, 0)
        self.buf = self.buf[pos:]
        done, out = 0, []
        for kind, flags, _sid, payload in got:
            if kind == DATA:
                self.unacked += len(payload)
            if kind in (HEADERS, DATA) and flags & END_STREAM:
                done += 1
            elif kind == SETTINGS and not flags & ACK:
                out.append(SETTINGS_ACK)
        if self.unacked > 1 << 20:
            out.append(frame(WINDOW_UPDATE, 0, 0, self.unacked.to_bytes(4, "big")))
            self.unacked = 0
        if out:
            self.transport.write(b"".join(out))
        Meter.fakes += time.process_time() - t0
        if done:
            self.bench.completed(done)
            if not self.bench.stopping:
                self.send(done)


class MemoryConnector:
    """The connector seam, answering every endpoint with a FakeUpstream."""

    async def connect(self, endpoint, protocol_factory, *, alpn=None):
        loop = asyncio.get_running_loop()
        down, up = MemoryTransport(loop), MemoryTransport(loop)
        proto = protocol_factory()
        down.peer = FakeUpstream(up)
        up.peer = proto
        proto.connection_made(down)
        return down, proto


class Bench:
    def __init__(self, requests: int) -> None:
        self.target = requests
        self.done = 0
        self.stopping = False
        self.finished: asyncio.Future | None = None

    def completed(self, n: int) -> None:
        self.done += n
        if self.done >= self.target:
            self.stopping = True
            if not self.finished.done():
                self.finished.set_result(None)


async def one_run(requests: int, connections: int, streams: int, profile: cProfile.Profile | None) -> dict:
    try:
        from meshctl_proxy.transport.h2_server import H2ServerConnection
    except ImportError:  # an older tree (--against)
        try:
            from meshctl_proxy.transport.http2_proxy import H2ServerConnection
        except ImportError:
            from meshctl_proxy.http2_proxy import H2ServerConnection

    loop = asyncio.get_running_loop()
    cfg = config.load({"MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": "127.0.0.1:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": "127.0.0.1:0",
                       "MESHCTL_PROXY_IDENTITY_DISABLED": "true"})
    proxy = Proxy(cfg, connector=MemoryConnector())
    await proxy.start()  # the real routers; its listeners are bound but get no traffic
    # As serve() does once started: the collector's thresholds and frozen start-up heap
    # are the process's (without this, collections were ~6% of the CPU measured here).
    try:
        from meshctl_proxy.transport.server import settle_heap
    except ImportError:  # an older tree (--against)
        from meshctl_proxy.server import settle_heap

    settle_heap()
    try:
        async def drive(n: int) -> tuple[float, float]:
            bench = Bench(n)
            bench.finished = loop.create_future()
            Meter.fakes = 0.0
            clients = []
            for i in range(connections):
                ctx = ConnectionContext(OUTBOUND, ("127.0.0.1", 40000 + i), ("127.0.0.1", 4140), None)
                server = H2ServerConnection(proxy, ctx, proxy.metrics.tcp(OUTBOUND, "src", None, None, "no_identity"))
                to_server, to_client = MemoryTransport(loop), MemoryTransport(loop)
                to_server.peer = server
                server.connection_made(to_client)
                to_client.peer = FakeClient(to_server, streams, bench)
                clients.append((server, to_client))
            t0 = time.process_time()
            async with asyncio.timeout(60):
                await bench.finished
            total = time.process_time() - t0
            fakes = Meter.fakes
            for _ in range(20):  # let the in-flight tail finish before closing
                await asyncio.sleep(0)
            for server, transport in clients:
                transport.close()
                server.connection_lost(None)
            return total - fakes, bench.done

        await drive(min(2000, requests))  # warm-up: pools, HPACK tables, caches
        if profile is not None:
            profile.enable()
        cpu, done = await drive(requests)
        if profile is not None:
            profile.disable()
        return {"us_per_request": cpu / done * 1e6, "requests": done}
    finally:
        proxy.begin_shutdown()
        for server in proxy.servers.values():
            server.close()


def runner():
    try:
        import uvloop
        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


def run_in(src: str, args) -> float:
    """One run over the source tree *src*, in a fresh interpreter; CPU us per request."""
    out = subprocess.run([sys.executable, __file__, "--one", "--requests", str(args.requests),
                          "--connections", str(args.connections), "--streams", str(args.streams)],
                         env={**os.environ, "BENCH_H2_SRC": src}, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout)["us_per_request"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", metavar="SRC", help="another source tree to run side by side (the baseline)")
    ap.add_argument("--profile", action="store_true", help="cProfile one more run and print the top 30 functions")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one run, JSON out (for --against)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(runner()(one_run(args.requests, args.connections, args.streams, None))))
        return
    print(f"HTTP/2 in-process: {args.requests} requests, {args.connections} connections x {args.streams} streams, "
          f"load average {os.getloadavg()[0]:.2f}")
    trees = {"this tree": SRC} if not args.against else {"baseline": args.against, "this tree": SRC}
    results: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.repeat):  # interleaved, so both see the same machine
        for name, src in trees.items():
            results[name].append(run_in(src, args))
    for name, runs in results.items():
        med = statistics.median(runs)
        print(f"  {name} ({trees[name]}): {med:.1f} us CPU per proxied request"
              f" (runs: {', '.join(f'{r:.1f}' for r in runs)}) = {1e6 / med:,.0f} req/s per proxy core")
    if args.against:
        base, new = (statistics.median(results[n]) for n in ("baseline", "this tree"))
        print(f"  ratio: {base / new:.2f}x requests per core ({(1 - new / base) * 100:.0f}% less CPU per request)")
    print(f"  load average after: {os.getloadavg()[0]:.2f}")
    if args.profile:
        prof = cProfile.Profile()
        runner()(one_run(args.requests, args.connections, args.streams, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
