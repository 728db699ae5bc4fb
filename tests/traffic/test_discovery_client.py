"""The proxy's destination client against a real destination server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
from pathlib import Path

from meshctl.destination.registry import LocalRegistry
from meshctl.destination.server import DestinationServer
from meshctl_proxy import config
from meshctl_proxy.discovery.client import DestinationClient, parse_suffixes

WEB = "web.shop.svc.cluster.local:8080"


def registry(endpoints: list[str]) -> dict:
    return {"services": [{"name": "web", "namespace": "shop", "clusterIPs": ["10.96.0.20"], "ports": [
        {"port": 8080, "endpoints": [{"address": a} for a in endpoints]}]}]}


def write(path: Path, doc) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


class Control:
    """A destination server we can stop and start again on the same port."""

    def __init__(self, path: Path) -> None:
        self.reg = LocalRegistry(path, poll_interval=0.02)
        self.server = DestinationServer(self.reg, heartbeat=0.2)
        self.srv = None
        self.port = 0
        self.runner = None

    async def start(self) -> None:
        self.srv = await self.server.start("127.0.0.1", self.port)
        self.port = self.srv.sockets[0].getsockname()[1]
        self.runner = asyncio.get_running_loop().create_task(self.reg.run())

    async def stop(self) -> None:
        self.srv.close()
        for t in list(self.server._connections):
            t.cancel()
        await self.srv.wait_closed()
        self.runner.cancel()


def test_suffixes_and_networks_decide_what_is_asked():
    c = DestinationClient(("127.0.0.1", 1), suffixes=parse_suffixes("svc.cluster.local.,example.org"),
                          networks=[ipaddress.ip_network("10.0.0.0/8")])
    assert c.should_resolve("web.shop.svc.cluster.local.:8080")
    assert c.should_resolve("EXAMPLE.org")
    assert not c.should_resolve("evilexample.org:80")
    assert not c.should_resolve("example.com")
    assert c.should_resolve("10.96.0.20:80") and not c.should_resolve("127.0.0.1:80")
    assert parse_suffixes(".") == (".",)
    assert DestinationClient(("h", 1), suffixes=(".",)).should_resolve("anything.at.all")


def test_from_config_reads_the_proxy_settings():
    cfg = config.load({"MESHCTL_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:8086",
                       "MESHCTL_PROXY_DESTINATION_INITIAL_TIMEOUT": "250ms"})
    c = DestinationClient.from_config(cfg)
    assert c.addr == ("127.0.0.1", 8086) and c.initial_wait == 0.25 and c.suffixes == ("svc.cluster.local",)


def test_resolves_follows_changes_and_survives_the_destination_service_going_away(tmp_path):
    p = tmp_path / "reg.json"
    write(p, registry(["127.0.0.1:9001", "127.0.0.1:9002"]))

    async def main():
        ctl = Control(p)
        await ctl.start()
        client = DestinationClient(("127.0.0.1", ctl.port), idle_timeout=1.0, backoff_min=0.05, backoff_max=0.2)
        try:
            res = await client.resolve(WEB)
            assert res is not None and [str(e) for e in res.endpoints] == ["127.0.0.1:9001", "127.0.0.1:9002"]
            assert await client.resolve("nothing.shop.svc.cluster.local:80") is None  # known: false
            assert await client.resolve("example.com:80") is None  # outside the suffixes
            w = client.watch(WEB)
            gen = w.generation
            write(p, registry(["127.0.0.1:9003"]))
            assert await w.wait_changed(gen, 2.0)
            assert [str(e) for e in w.resolution.endpoints] == ["127.0.0.1:9003"]
            # The destination service goes away: the last known endpoints keep being served.
            await ctl.stop()
            await asyncio.sleep(0.5)
            assert not w.connected
            res = await client.resolve(WEB)
            assert res is not None and [str(e) for e in res.endpoints] == ["127.0.0.1:9003"]
            reconnects = client.reconnects
            assert reconnects >= 2  # it keeps trying, with backoff (not a busy loop)
            assert reconnects < 20
            # It comes back (same port) with a new view: the client reconnects and catches up.
            write(p, registry(["127.0.0.1:9004"]))
            ctl.reg.reload()
            await ctl.start()
            gen = w.generation
            t0 = time.monotonic()
            assert await w.wait_changed(gen, 3.0)
            assert time.monotonic() - t0 < 1.0  # backoff_max 0.2 s
            assert [str(e) for e in w.resolution.endpoints] == ["127.0.0.1:9004"]
            await ctl.stop()
        finally:
            await client.aclose()

    asyncio.run(main())


def test_unreachable_destination_service_means_forward_as_addressed_after_the_initial_wait():
    async def main():
        import socket

        with socket.socket() as s:  # a port with nobody listening
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = DestinationClient(("127.0.0.1", port), initial_wait=0.3, backoff_min=0.05)
        try:
            t0 = time.monotonic()
            assert await client.resolve(WEB) is None
            assert time.monotonic() - t0 < 0.2  # refused at once: no need to wait the 0.3 s
            t0 = time.monotonic()
            assert await client.resolve(WEB) is None  # the wait is paid once, not per request
            assert time.monotonic() - t0 < 0.05
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_silent_stream_is_dropped_and_reopened(tmp_path):
    """A server that accepts but never answers (a hung control plane) must not wedge the client."""
    async def main():
        accepted = []

        async def hang(reader, writer):
            accepted.append(writer)
            await asyncio.sleep(30)

        srv = await asyncio.start_server(hang, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        client = DestinationClient(("127.0.0.1", port), idle_timeout=0.2, initial_wait=0.1, backoff_min=0.05,
                                   backoff_max=0.05)
        try:
            assert await client.resolve(WEB) is None
            await asyncio.sleep(0.8)
            assert len(accepted) >= 2
        finally:
            await client.aclose()
            srv.close()
            for w in accepted:
                w.close()

    asyncio.run(main())


def test_watches_are_bounded_least_recently_used_closed_first():
    async def main():
        client = DestinationClient(("127.0.0.1", 1), max_watches=2, initial_wait=0.01)
        try:
            a = client.watch("a.ns.svc.cluster.local:80")
            b = client.watch("b.ns.svc.cluster.local:80")
            now = time.monotonic()
            a.last_used, b.last_used = now, now - 1  # neither idle for a minute: the older goes
            c = client.watch("c.ns.svc.cluster.local:80")
            assert b.closed and not a.closed and not c.closed
            assert set(client._watches) == {"a.ns.svc.cluster.local:80", "c.ns.svc.cluster.local:80"}
            assert len(client._tasks) == 2
            assert client.watch("b.ns.svc.cluster.local:80") is not b  # a new stream when asked again
            a.last_used = c.last_used = now - 120  # idle: closed together when room is needed
            client.watch("d.ns.svc.cluster.local:80")
            assert a.closed and c.closed
        finally:
            await client.aclose()
    asyncio.run(main())
