"""CPU per proxied HTTP/1.1 request, in one process, without sockets: the proxy's own Python cost.

The real protocol objects run on a real uvloop loop: ``H1ServerConnection`` (the
client-facing side, outbound, routed by Host as in bench_proxy's "meshctl x1")
takes wrk's request, the fast path sends it on a pooled ``H1ClientConnection``,
which reads nginx's response (five headers, a 12-byte body) and the answer goes
back.  Only the transports are stand-ins (they keep what is written), so the
figure is the proxy's code alone: no syscalls, no kernel socket work.  Run under
wrk (bench_proxy) the same request also costs the kernel's part and uvloop's.

Side by side, in alternating subprocesses: ``meshctl_proxy.wire.http1`` as imported
(compiled by setup.py when built) and the same module run from its ``.py``
source, the baseline.  ``--against SRC`` adds another source tree (e.g. a
``git worktree`` of main) as a third column.

    python benches/bench_h1_cpu.py                 # 20,000 requests per run, 5 runs each, best of each
    python benches/bench_h1_cpu.py --against /work/other/src

Bounded: a fixed number of requests per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 15:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
            b"hello world\n")


def _child(requests: int, runs: int, source: bool) -> None:
    """One variant in this process: print {"us": best CPU microseconds per request, "module": file}."""
    import asyncio
    import gc
    import importlib.machinery
    import importlib.util
    import time

    import meshctl_proxy

    # The proxy's layout since its sub-packages, else the flat one of an older tree (--against).
    layered = (Path(meshctl_proxy.__file__).parent / "wire").is_dir()
    if source:  # the plain-Python http1, even where the compiled extension would import
        package = Path(meshctl_proxy.__file__).parent
        path = package / "wire" / "http1.py" if layered else package / "http1.py"
        name = "meshctl_proxy.wire.http1" if layered else "meshctl_proxy.http1"
        if layered:
            import meshctl_proxy.wire  # noqa: F401  (the parent package first)
        loader = importlib.machinery.SourceFileLoader(name, str(path))
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
        sys.modules[loader.name] = module
        loader.exec_module(module)
    import uvloop

    from meshctl_proxy import config

    from meshctl_proxy.model import OUTBOUND, ConnectionContext, Endpoint

    if layered:
        from meshctl_proxy.policy.traffic_router import TrafficRouter
        if (Path(meshctl_proxy.__file__).parent / "transport" / "h1_server.py").exists():
            from meshctl_proxy.transport.h1_client import H1ClientConnection
            from meshctl_proxy.transport.h1_server import H1ServerConnection
        else:  # a tree from before the HTTP/1 connection split (issue 12)
            from meshctl_proxy.transport.http1_proxy import H1ClientConnection, H1ServerConnection
        from meshctl_proxy.transport.server import Proxy
        from meshctl_proxy.wire import http1
    else:
        from meshctl_proxy import http1
        from meshctl_proxy.http1_proxy import H1ClientConnection, H1ServerConnection
        from meshctl_proxy.server import Proxy
        from meshctl_proxy.traffic import TrafficRouter
    sys.path.insert(0, str(ROOT / "tests"))
    from proxy.memory import MemoryTransport as Transport  # the tests' in-memory transport

    async def main() -> float:
        proxy = Proxy(config.load({"MESHCTL_PROXY_IDENTITY_DISABLED": "true"}))
        # The outbound router the proxy runs (server.Proxy.start): discovery, balancing and route
        # policy, which passes names the destination service is not asked about straight through.
        proxy.routers[OUTBOUND] = TrafficRouter.from_config(proxy.config, metrics=proxy.route_metrics)
        ctx = ConnectionContext(OUTBOUND, ("127.0.0.1", 50000), ("127.0.0.1", 4140), None)
        server = H1ServerConnection(proxy, ctx, proxy.metrics.tcp(OUTBOUND, "src", None, None, "no_identity"))
        client_side = Transport()
        server.connection_made(client_side)
        pool = proxy.upstreams[OUTBOUND].h1
        upstream = H1ClientConnection(pool, Endpoint("127.0.0.1", 8080),
                                      proxy.metrics.tcp(OUTBOUND, "dst", None, None, "no_identity"))
        upstream_side = Transport()
        upstream.connection_made(upstream_side)
        pool.release(upstream)

        def one() -> None:
            server.data_received(REQUEST)
            upstream.data_received(RESPONSE)

        # The proxy's writes go out at the end of the loop's pass (meshctl_proxy.transport.outbox), so each
        # request is followed by one pass of the loop; a pass with nothing to do is timed alike
        # and subtracted, so the figure keeps counting only the proxy's own work.
        async def timed(n: int, work) -> float:
            t0 = time.process_time()
            for _ in range(n):
                work()
                await asyncio.sleep(0)
            return (time.process_time() - t0) / n * 1e6

        def nothing() -> None:
            pass

        for _ in range(2000):
            one()
            await asyncio.sleep(0)
        # The exchange really happened: the request went up, the response came back.
        up, down = upstream_side.take(), client_side.take()
        assert up.startswith(b"GET / HTTP/1.1\r\n") and up.endswith(b"\r\n\r\n"), up[-200:]
        assert down.startswith(b"HTTP/1.1 200 OK\r\n") and down.endswith(b"hello world\n"), down[-200:]
        gc.collect()
        gc.freeze()  # as the proxy does after start-up (server.settle_heap)
        best = float("inf")
        for _ in range(runs):
            client_side.writes = 0
            idle = await timed(requests, nothing)
            best = min(best, await timed(requests, one) - idle)
            assert client_side.writes == requests
            client_side.take()
            upstream_side.take()
        return best

    us = uvloop.run(main())
    print(json.dumps({"us": us, "module": Path(http1.__file__).name}))


def _run(src: Path, requests: int, runs: int, source: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = [sys.executable, __file__, "--child", "--requests", str(requests), "--runs", str(runs)]
    out = subprocess.run(args + (["--source"] if source else []), env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20_000, help="requests per timed run (default 20,000)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per process; the best counts (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating subprocess rounds (default 3)")
    ap.add_argument("--against", type=Path, action="append", default=[],
                    help="another source tree, run the same way (its http1 as imported); may be repeated")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--source", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.requests, args.runs, args.source)
        return
    variants = [("http1 as imported", ROOT / "src", False), ("http1 from source (baseline)", ROOT / "src", True)]
    for other in args.against:
        variants.append((f"{other} as imported", other, False))
    best: dict[str, float] = {}
    modules: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, src, source in variants:
            r = _run(src, args.requests, args.runs, source)
            best[name] = min(best.get(name, float("inf")), r["us"])
            modules[name] = r["module"]
    base = best["http1 from source (baseline)"]
    print(f"\n# bench_h1_cpu: {args.rounds} rounds x {args.runs} runs x {args.requests} requests, best of each\n")
    print("| variant | http1 module | CPU us per proxied request | vs source |")
    print("| --- | --- | ---: | ---: |")
    for name, _src, _source in variants:
        print(f"| {name} | {modules[name]} | {best[name]:.2f} | {best[name] / base:.2f}x |")


if __name__ == "__main__":
    main()
