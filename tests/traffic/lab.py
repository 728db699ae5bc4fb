"""A loopback lab for traffic tests and benches: real backends, a destination
service on a registry file, a real proxy, and a bounded load generator.

Everything listens on 127.0.0.1 with ports the kernel picks; every load loop
is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import time
from pathlib import Path

import h11

HOST = "127.0.0.1"


class Backend:
    """An HTTP/1.1 server answering ``200 <name>`` after ``delay`` s; ``fail_rate`` of answers are 500."""

    def __init__(self, name: str, *, delay: float = 0.0, fail_rate: float = 0.0, seed: int = 0) -> None:
        self.name = name
        self.delay = delay
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.hits = 0
        self.failures = 0
        self.bodies: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task] = set()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def start(self) -> "Backend":
        self._server = await asyncio.start_server(self._handle, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        conn = h11.Connection(h11.SERVER)
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    body = b""
                    target = event.target.decode()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    if target.startswith("/__delay/"):  # the bench's control: /__delay/<ms>
                        self.delay = float(target.rsplit("/", 1)[1]) / 1000
                        writer.write(conn.send(h11.Response(status_code=204, headers=[])))
                        writer.write(conn.send(h11.EndOfMessage()))
                        await writer.drain()
                        conn.start_next_cycle()
                        continue
                    self.hits += 1
                    self.bodies.append(body)
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    fail = self.fail_rate and self.rng.random() < self.fail_rate
                    self.failures += bool(fail)
                    payload = self.name.encode()
                    writer.write(conn.send(h11.Response(status_code=500 if fail else 200, headers=[
                        ("content-length", str(len(payload))), ("x-backend", self.name)])))
                    writer.write(conn.send(h11.Data(data=payload)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    status: int
    latency: float  # seconds
    backend: str  # x-backend header, "" for proxy-made answers
    error: str  # meshctl-proxy-error header, or the client's own failure


class Client:
    """One keep-alive HTTP/1.1 connection (h11)."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.reader = self.writer = None
        self.conn: h11.Connection | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(*self.addr)
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None

    async def request(self, authority: str, path: str = "/", *, method: str = "GET", body: bytes = b"",
                      timeout: float = 30.0) -> Result:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if self.writer is None or self.conn.our_state is not h11.IDLE:
                    self.close()
                    await self._connect()
                conn = self.conn
                headers = [("host", authority), ("content-length", str(len(body)))]
                self.writer.write(conn.send(h11.Request(method=method, target=path, headers=headers)))
                if body:
                    self.writer.write(conn.send(h11.Data(data=body)))
                self.writer.write(conn.send(h11.EndOfMessage()))
                status, hdrs = 0, {}
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await self.reader.read(65536)
                        conn.receive_data(data)
                        if not data and conn.their_state is not h11.DONE:
                            raise ConnectionError("closed mid-response")
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                        hdrs = {k.decode().lower(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h11.EndOfMessage):
                        break
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    self.close()
        except (OSError, h11.ProtocolError, TimeoutError) as exc:
            self.close()
            return Result(0, time.perf_counter() - start, "", f"client: {type(exc).__name__}")
        return Result(status, time.perf_counter() - start, hdrs.get("x-backend", ""),
                      hdrs.get("meshctl-proxy-error", ""))


async def load(addr: tuple[str, int], authority: str, *, requests: int, concurrency: int, path: str = "/",
               method: str = "GET", body: bytes = b"", rate: float | None = None,
               max_seconds: float = 60.0, timeout: float = 30.0) -> list[Result]:
    """*requests* requests over *concurrency* connections (optionally paced at *rate*/s), bounded by *max_seconds*."""
    results: list[Result] = []
    issued = 0
    start = time.perf_counter()
    end = start + max_seconds

    async def worker() -> None:
        nonlocal issued
        client = Client(addr)
        try:
            while issued < requests and time.perf_counter() < end:
                n = issued
                issued += 1
                if rate:
                    due = start + n / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                results.append(await client.request(authority, path, method=method, body=body, timeout=timeout))
        finally:
            client.close()

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return results


def registry_doc(services: dict[tuple[str, str, int], list[str]], profiles: list[dict] = ()) -> dict:
    """{(name, namespace, port): ["127.0.0.1:p", ...]} -> a registry document."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for (name, ns, port), addrs in services.items():
        grouped.setdefault((name, ns), []).append({"port": port, "endpoints": [{"address": a} for a in addrs]})
    return {"services": [{"name": n, "namespace": ns, "ports": ports} for (n, ns), ports in grouped.items()],
            "profiles": list(profiles)}


def profile_doc(fqdn: str, spec: dict) -> dict:
    return {"apiVersion": "meshctl.io/v1alpha2", "kind": "ServiceProfile",
            "metadata": {"name": fqdn, "namespace": fqdn.split(".")[1]}, "spec": spec}


def write_json(path: Path, doc) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)  # atomic: the registry poller never reads half a file


class Lab:
    """Destination service (registry file) + proxy, in this event loop."""

    def __init__(self, tmp: Path, *, balancer: str = "peak-ewma", env: dict | None = None) -> None:
        self.tmp = tmp
        self.registry = tmp / "registry.json"
        self.balancer = balancer
        self.env = env or {}
        self.proxy = None
        self.router = None
        self.dst_srv = None
        self.dst_runner = None
        self.dst_port = 0

    async def start_destination(self) -> None:
        from meshctl.destination.registry import LocalRegistry
        from meshctl.destination.server import DestinationServer

        if not self.registry.exists():
            write_json(self.registry, {})
        self.discovery = LocalRegistry(self.registry, poll_interval=0.02)
        self.dst_server = DestinationServer(self.discovery, heartbeat=0.5)
        self.dst_srv = await self.dst_server.start(HOST, self.dst_port)
        self.dst_port = self.dst_srv.sockets[0].getsockname()[1]
        self.dst_runner = asyncio.get_running_loop().create_task(self.discovery.run())

    async def stop_destination(self) -> None:
        self.dst_srv.close()
        for t in list(self.dst_server._connections):
            t.cancel()
        await self.dst_srv.wait_closed()
        self.dst_runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.dst_runner

    async def start(self) -> "Lab":
        from meshctl_proxy import config
        from meshctl_proxy.transport.server import Proxy
        from meshctl_proxy.policy.traffic_router import TrafficRouter

        await self.start_destination()
        env = {
            "MESHCTL_PROXY_OUTBOUND_LISTEN_ADDR": f"{HOST}:0", "MESHCTL_PROXY_INBOUND_LISTEN_ADDR": f"{HOST}:0",
            "MESHCTL_PROXY_ADMIN_LISTEN_ADDR": f"{HOST}:0", "MESHCTL_PROXY_CONTROL_LISTEN_ADDR": f"{HOST}:0",
            "MESHCTL_PROXY_DESTINATION_SVC_ADDR": f"{HOST}:{self.dst_port}",
            "MESHCTL_PROXY_BALANCER": self.balancer, "MESHCTL_PROXY_IDENTITY_DISABLED": "true",
            **self.env,
        }
        self.config = config.load(env)
        self.proxy = Proxy(self.config)  # the default outbound router is the TrafficRouter
        await self.proxy.start()
        self.router = self.proxy.routers["outbound"]
        assert isinstance(self.router, TrafficRouter)
        self.router.client.backoff_max = 0.5
        self.outbound = self.proxy.addresses["outbound"]
        return self

    def set_registry(self, services: dict, profiles: list[dict] = ()) -> None:
        write_json(self.registry, registry_doc(services, profiles))
        self.discovery.reload()  # the poller would see it within 20 ms; tests want it now

    async def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.begin_shutdown()
            await asyncio.wait_for(self.proxy.stopped.wait(), 10)
        if self.dst_srv is not None and self.dst_srv.is_serving():
            await self.stop_destination()

    def metrics_text(self) -> str:
        """What the admin listener serves on /metrics."""
        return self.proxy.metrics.render().decode()
