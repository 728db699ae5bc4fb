"""The destination service: registry file, resolution rules, streaming server, CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from meshctl.destination.discovery import Discovery, Snapshot
from meshctl.destination.registry import LocalRegistry, load_registry, parse_registry
from meshctl.destination.server import DestinationServer
from meshctl.errors import InputError

REGISTRY = {
    "services": [
        {"name": "web", "namespace": "shop", "clusterIPs": ["10.96.0.20"], "ports": [
            {"port": 8080, "endpoints": [
                {"address": "127.0.0.1:9002", "labels": {"pod": "web-1"}},
                {"address": "127.0.0.1:9001", "identity": "web.shop.serviceaccount.identity.meshctl.cluster.local",
                 "protocolHint": "h2", "weight": 3},
            ]},
        ]},
        {"name": "empty", "namespace": "shop", "ports": [{"port": 80}]},
    ],
    "profiles": [
        {"apiVersion": "meshctl.io/v1alpha2", "kind": "ServiceProfile",
         "metadata": {"name": "web.shop.svc.cluster.local", "namespace": "shop"},
         "spec": {"routes": [{"name": "GET /", "condition": {"method": "GET", "pathRegex": "/"}}]}},
    ],
}


def write(path: Path, doc) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def test_snapshot_resolves_names_cluster_ips_and_pod_ips():
    snap = parse_registry(REGISTRY)
    r = snap.resolve("Web.Shop.svc.cluster.local.:8080")
    assert r.known and r.authority == "web.shop.svc.cluster.local:8080"
    assert [str(e) for e in r.endpoints] == ["127.0.0.1:9001", "127.0.0.1:9002"]  # sorted
    meshed = r.endpoints[0]
    assert meshed.meshed and meshed.identity.startswith("web.shop.") and meshed.protocol_hint == "h2"
    assert meshed.weight == 3
    # The service's endpoints carry its namespace and name, as Linkerd's destination labels them
    # (proxies export them as dst_namespace, dst_service).
    assert not r.endpoints[1].meshed
    assert r.endpoints[1].label_map == {"namespace": "shop", "pod": "web-1", "service": "web"}
    assert r.profile["metadata"]["name"] == "web.shop.svc.cluster.local"
    assert snap.resolve("10.96.0.20:8080").endpoints == r.endpoints
    pod = snap.resolve("127.0.0.1:9001")
    # A pod IP resolves to that endpoint alone: no Service to name.
    assert pod.known and pod.endpoints == (dataclasses.replace(meshed, labels=()),) and pod.profile is None
    assert not snap.resolve("web.shop.svc.cluster.local:9999").known  # not a port of the service
    assert not snap.resolve("example.com:80").known
    empty = snap.resolve("empty.shop.svc.cluster.local")
    assert empty.known and empty.endpoints == () and empty.profile is None


@pytest.mark.parametrize("doc,fragment", [
    ({"services": [{"name": "web"}], "extra": 1}, "extra: unknown field"),
    ({"services": {"name": "web"}}, "services: expected a list"),
    ({"services": [{"name": "we b"}]}, "services[0].name: expected a DNS name"),
    ({"services": [{"name": "web", "ports": [{"port": 0}]}]}, "services[0].ports[0].port"),
    ({"services": [{"name": "web", "ports": [{"port": 80, "endpoints": [{"address": "nope"}]}]}]},
     "services[0].ports[0].endpoints[0].address"),
    ({"services": [{"name": "web", "ports": [{"port": 80, "endpoints": [{"address": "1.2.3.4:80", "weight": -1}]}]}]},
     "endpoints[0].weight"),
    ({"services": [{"name": "web", "ports": [{"port": 80, "endpoints": [
        {"address": "1.2.3.4:80", "protocolHint": "smoke"}]}]}]}, "endpoints[0].protocolHint"),
    ({"services": [{"name": "web", "clusterIPs": ["x"]}]}, "services[0].clusterIPs[0]"),
    ({"services": [{"name": "web"}, {"name": "web"}]}, "services[1].name: service web.default listed twice"),
    ({"profiles": [{"kind": "Service", "metadata": {"name": "a"}}]}, "profiles[0].kind"),
    ({"profiles": [{"kind": "ServiceProfile"}]}, "profiles[0].metadata: expected a map"),
])
def test_bad_registry_names_the_field(doc, fragment):
    with pytest.raises(InputError) as exc:
        parse_registry(doc, source="reg.yaml")
    assert str(exc.value).startswith("reg.yaml: ")
    assert fragment in str(exc.value)


def test_bad_yaml_names_the_file_and_line(tmp_path):
    p = tmp_path / "reg.yaml"
    p.write_text("services:\n  - name: web\n   ports: [\n")
    with pytest.raises(InputError, match=r"reg.yaml \(line \d+\): not valid YAML"):
        load_registry(p)


def test_local_registry_is_a_discovery_and_publishes_only_real_changes(tmp_path):
    p = tmp_path / "reg.json"
    write(p, REGISTRY)
    reg = LocalRegistry(p)
    assert isinstance(reg, Discovery)
    v = reg.version
    assert not reg.reload()  # same content: no new version
    assert reg.version == v
    doc = json.loads(json.dumps(REGISTRY))
    doc["services"][0]["ports"][0]["endpoints"].pop()
    write(p, doc)
    assert reg.reload() and reg.version == v + 1
    assert len(reg.resolve("web.shop.svc.cluster.local:8080").endpoints) == 1
    errors = []
    reg._on_error = errors.append
    p.write_text("{not json")
    assert not reg.reload()
    assert len(reg.resolve("web.shop.svc.cluster.local:8080").endpoints) == 1  # last good view kept
    assert errors and "keeping the last good registry" in errors[0]


async def _read_lines(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> list[dict]:
    """Read *n* NDJSON lines from a chunked HTTP/1.1 response (headers skipped)."""
    out: list[dict] = []
    async def go():
        while len(out) < n:
            line = await reader.readline()
            if not line:
                raise EOFError
            line = line.strip()
            if line.startswith(b"{"):
                out.append(json.loads(line))
    await asyncio.wait_for(go(), timeout)
    return out


def test_server_streams_updates_and_heartbeats_and_survives_client_departure(tmp_path):
    p = tmp_path / "reg.json"
    write(p, REGISTRY)

    async def main():
        reg = LocalRegistry(p, poll_interval=0.02)
        server = DestinationServer(reg, heartbeat=0.2)
        srv = await server.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(reg.run())
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/watch?authority=web.shop.svc.cluster.local:8080 HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"200" in head.split(b"\r\n")[0] and b"chunked" in head.lower()
            [first] = await _read_lines(reader, 1)
            assert first["type"] == "update" and len(first["resolution"]["endpoints"]) == 2
            # An unrelated change wakes the watcher but sends nothing for this authority.
            doc = json.loads(json.dumps(REGISTRY))
            doc["services"][1]["ports"][0]["endpoints"] = [{"address": "127.0.0.1:1"}]
            write(p, doc)
            doc["services"][0]["ports"][0]["endpoints"].append({"address": "127.0.0.1:9003"})
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            write(p, doc)
            lines = await _read_lines(reader, 1)
            # heartbeats may come first; wait for the update
            while lines[-1]["type"] != "update":
                lines += await _read_lines(reader, 1)
            assert time.monotonic() - t0 < 1.0
            assert [e["address"] for e in lines[-1]["resolution"]["endpoints"]] == [
                "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
            hb = await _read_lines(reader, 1)
            assert hb[0]["type"] == "heartbeat"
            assert server.watchers == 1
            writer.close()
            for _ in range(100):
                if server.watchers == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.watchers == 0
            # one-shot resolve and readiness still answer
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/resolve?authority=nothing.example:80 HTTP/1.1\r\nHost: x\r\n\r\n")
            body = (await reader.read()).split(b"\r\n\r\n", 1)[1]
            assert json.loads(body) == {"authority": "nothing.example:80", "known": False, "endpoints": [],
                                        "profile": None}
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/resolve?authority=bad:port:x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 400 " in (await reader.read()).split(b"\r\n")[0]
            writer.close()
            runner.cancel()
        srv.close()
        await srv.wait_closed()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_the_registry_and_rejects_bad_files(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: web\n    ports: [{port: 99999}]\n")
    r = cli("destination", "serve", "--registry", str(bad))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith(f"Error: {bad}: services[0].ports[0].port")
    good = tmp_path / "reg.json"
    write(good, REGISTRY)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", "destination", "serve", "--registry", str(good),
                             "--addr", f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/v1/resolve?authority=web.shop.svc.cluster.local:8080", timeout=2) as resp:
                    doc = json.load(resp)
                break
            except OSError:
                assert time.monotonic() < deadline, proc.stderr.read1().decode() if proc.poll() is not None else ""
                time.sleep(0.1)
        assert doc["known"] and len(doc["endpoints"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_profile_the_proxy_could_not_use_is_refused_with_its_path():
    doc = json.loads(json.dumps(REGISTRY))
    doc["profiles"][0]["spec"]["routes"][0]["condition"]["pathRegex"] = "("
    with pytest.raises(InputError, match=r"reg.yaml: profiles\[0\]: spec.routes\[0\].condition.pathRegex"):
        parse_registry(doc, source="reg.yaml")


def test_cli_bad_listen_address_is_one_line(tmp_path, cli):
    good = tmp_path / "reg.json"
    write(good, REGISTRY)
    r = cli("destination", "serve", "--registry", str(good), "--addr", "nowhere")
    assert r.returncode == 2  # a usage error
    assert r.stderr.strip() == "Error: --addr: expected HOST:PORT, got 'nowhere'"
