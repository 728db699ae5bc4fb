"""Live calls: tap events (``req``/``rsp``/``end``, tied by id) turned into one row per request.

The stream is the one ``meshctl viz tap`` reads (``meshctl.viz.tap``): the same
subscription code, the same credentials, so the dashboard can tap exactly what
its user could tap from the terminal, and nothing more (docs/dashboard.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from meshctl.dashboard.model import LiveCall

QUEUE_LIMIT = 1000  # rows waiting for a slow browser; beyond, the oldest are dropped (tap drops too)


class CallAssembler:
    """Pairs each request's events into a :class:`LiveCall`, emitted at its ``end``."""

    def __init__(self, name_of=lambda addr: addr) -> None:
        self.name_of = name_of  # address -> what the user knows it as (a pod), else the address
        self.open: dict[tuple, dict] = {}

    def add(self, proxy: str, pod: str, event: dict) -> LiveCall | None:
        kind, key = event.get("event"), (proxy, event.get("id"))
        if kind == "req":
            self.open[key] = dict(event)
            return None
        req = self.open.get(key)
        if req is None:
            return None  # the subscription began mid-request
        if kind == "rsp":
            req["status"], req["latency_ms"] = event.get("status"), event.get("latency_ms")
            return None
        if kind != "end":
            return None
        del self.open[key]
        inbound = req.get("direction") == "inbound"
        source = pod if not inbound else self.name_of(req.get("src"))
        destination = pod if inbound else self.name_of(req.get("dst")) or req.get("authority") or "-"
        error = event.get("error")
        if error is None and event.get("grpc_status") not in (None, 0):
            error = f"grpc-status {event['grpc_status']}"
        return LiveCall(at=float(req.get("ts") or time.time()), direction=req.get("direction") or "-",
                        source=source or "-", destination=destination, tls=bool(req.get("tls")),
                        method=req.get("method") or "-", authority=req.get("authority") or "",
                        path=req.get("path") or "", status=req.get("status"), latency_ms=req.get("latency_ms"),
                        error=error)


async def local_calls(mesh, namespace: str, name: str) -> AsyncIterator[LiveCall]:
    """Live calls of deployment *name*, from its proxies' tap, with the local mesh's tap credentials."""
    from meshctl.viz import tap

    resolver = tap.LocalResolver(mesh)
    targets = resolver.targets(tap.Resource("deployment", name), namespace)  # MeshctlError naming what exists

    def name_of(addr: str | None) -> str | None:
        peer = resolver.peer(addr)
        return peer.pod if peer is not None else addr

    async for call in _calls(tap.LocalSource(resolver, targets), name_of):
        yield call


async def cluster_calls(cluster, namespace: str, name: str) -> AsyncIterator[LiveCall]:
    """Live calls of deployment *name* in a cluster, through the tap server (the tap APIService), with
    the dashboard's own Kubernetes credentials (in the web pod: its ServiceAccount, bound to tap-admin)."""
    from meshctl.viz import tap

    pods: dict[str, str] = {}  # address -> pod, as the tap server named the ends of each request

    def learn(event: dict) -> None:
        for side in ("src", "dst"):
            resource = event.get(f"{side}_resource")
            if event.get(side) and isinstance(resource, dict) and resource.get("pod"):
                pods[event[side]] = resource["pod"]

    source = tap.ClusterSource(cluster, tap.Resource("deployment", name), namespace)
    async for call in _calls(source, lambda addr: pods.get(addr or "", addr), learn):
        yield call


async def _calls(source, name_of, learn=lambda event: None) -> AsyncIterator[LiveCall]:
    from meshctl.viz import tap

    assembler = CallAssembler(name_of)
    queue: asyncio.Queue[LiveCall] = asyncio.Queue(QUEUE_LIMIT)
    stop = asyncio.Event()

    def on_event(target, event: dict) -> None:
        if event.get("event") == "req":
            learn(event)
        call = assembler.add(target.name, target.pod, event)
        if call is None:
            return
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(call)

    runner = asyncio.create_task(source.run(tap.TapQuery(), on_event=on_event, notice=lambda msg: None, stop=stop))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            runner.result()  # a refusal (TapError) reaches the page as its message
            return
    finally:
        stop.set()
        runner.cancel()
        with contextlib.suppress(BaseException):
            await runner
