"""What mTLS costs: handshakes, and the two-proxy path with and without it, in one run.

    python benches/bench_mtls.py [--requests-seconds 8] [--connections 16] [--handshakes 400]

1. Handshakes per second per core, both sides in one process on one core:
   - baseline: a plain Python ``ssl`` TLS 1.3 handshake (server certificate
     only, P-256, ``create_default_context`` with hostname check);
   - mesh: what two proxies do (both certificates, the client's
     ``MeshConnector`` path with the SAN identity check, the server's
     MemoryBIO termination after detection read the ClientHello).
2. The two-proxy path, ``wrk`` -> proxy A (outbound) -> proxy B (inbound) ->
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
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from meshctl.identity import certs  # noqa: E402
from meshctl_proxy import tls  # noqa: E402
from meshctl_proxy.tls_stream import TlsServerTransport  # noqa: E402

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
            if isinstance(tls.parse_client_hello(self.buf), tls.ClientHello):
                self.transport.pause_reading()
                asyncio.ensure_future(self.finish())

        async def finish(self):
            t = TlsServerTransport(self.transport, server_ctx)
            self.transport.resume_reading()
            sslobj = await t.handshake(self.buf, timeout=10)
            tls.peer_identity(sslobj)
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
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname)
        if mesh:
            tls.verify_peer_identity(writer.get_extra_info("ssl_object"), server_hostname)
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
    mesh_server = tls.server_context(trust_anchors_pem=anchor.cert_pem, cert_file=s_cert, key_file=s_key)
    mesh_client = tls.client_context(trust_anchors_pem=anchor.cert_pem, cert_file=c_cert, key_file=c_key)
    out = {}
    for name, kw in (("python_ssl_baseline", dict(server_ctx=base_server, client_ctx=base_client, mesh=False)),
                     ("mesh_mtls", dict(server_ctx=mesh_server, client_ctx=mesh_client, mesh=True))):
        asyncio.run(_handshakes(20, server_hostname=SERVER, **kw))  # warm up
        cpu = asyncio.run(_handshakes(n, server_hostname=SERVER, **kw))
        out[name] = {"handshakes": n, "cpu_s": round(cpu, 3), "per_handshake_both_sides_ms": round(cpu / n * 1000, 3),
                     "handshakes_per_s_per_core": round(n / cpu, 1)}
    out["mesh_vs_baseline_cost"] = round(out["mesh_mtls"]["cpu_s"] / out["python_ssl_baseline"]["cpu_s"], 2)
    return out


# --- 2. the two-proxy path ----------------------------------------------------------------

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


def run_wrk(url: str, *, seconds: float, connections: int, threads: int = 1) -> dict:
    # wrk's latency summary: p50/p99 from --latency; one thread keeps a core for the proxies.
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                       capture_output=True, text=True, timeout=seconds + 30)
    text = r.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock_err = re.search(r"Socket errors: (.*)", text)

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", text, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1) if sock_err else ""}


if __name__ == "__main__":  # pragma: no cover - the two-proxy phase is added below
    pass
