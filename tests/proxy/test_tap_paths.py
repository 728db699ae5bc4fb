"""Tap sees real traffic on every path: HTTP/1.1 and HTTP/2, each router, the fast and the general path.

The proxy is wired as ``serve()`` wires it (test_request_hook's ``_start``);
the subscriber is the CLI's client over the real control listener; requests
are real, through real sockets, to the test apps.
"""

from __future__ import annotations

import json

import pytest

from meshctl.viz import tap as client

from .conftest import wait_for
from .test_request_hook import ROUTERS, _client, _start, _stop
from .test_tap import Subscription


@pytest.fixture
def tapped(loop_thread):
    started = []

    def start(router: str):
        proxy = loop_thread.run(_start(router))
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        loop_thread.run(_stop(proxy))


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
@pytest.mark.parametrize("listener,router", ROUTERS)
@pytest.mark.parametrize("with_body", [False, True], ids=["fast", "general"])
def test_every_path_reports_each_request_to_tap(tapped, apps, protocol, listener, router, with_body):
    proxy = tapped(router)
    sub = Subscription(proxy, client.TapQuery(path="/tap/", header_names=True))
    try:
        app = apps[protocol]
        host, port = proxy.addresses[listener]
        authority = f"127.0.0.1:{app.port}"
        n = 3
        with _client(protocol) as c:
            c.get(f"http://{host}:{port}/not-tapped", headers={"Host": authority})  # outside the path filter
            for i in range(n):
                url = f"http://{host}:{port}/tap/{i}?secret=s3cr3t"
                headers = {"Host": authority, "X-Test": "value-never-seen"}
                r = (c.post(url, content=b"x" * (100 + i), headers=headers) if with_body
                     else c.get(url, headers=headers))
                assert r.status_code == 200 and r.http_version == protocol
        assert wait_for(lambda: sum(e["event"] == "end" for e in sub.events) == n)
        events = sub.events[1:]
        reqs = [e for e in events if e["event"] == "req"]
        assert [(e["direction"], e["protocol"], e["method"], e["path"], e["authority"], e["dst"]) for e in reqs] == [
            (listener, protocol, "POST" if with_body else "GET", f"/tap/{i}", authority, authority) for i in range(n)]
        for req in reqs:
            rsp, end = [e for e in events if e["id"] == req["id"] and e["event"] != "req"]
            assert rsp["event"] == "rsp" and rsp["status"] == 200 and rsp["latency_ms"] >= 0
            assert end["event"] == "end" and end["error"] is None and end["response_bytes"] > 0
            assert end["duration_ms"] >= rsp["latency_ms"]
            assert "x-test" in req["header_names"]
        wire = json.dumps(events)
        assert "value-never-seen" not in wire and "s3cr3t" not in wire  # header values and queries stay home
    finally:
        sub.close()


def test_grpc_status_from_trailers_reaches_the_end_event(tapped, apps):
    proxy = tapped("direct")
    sub = Subscription(proxy, client.TapQuery())
    try:
        host, port = proxy.addresses["outbound"]
        with _client("HTTP/2") as c:
            r = c.post(f"http://{host}:{port}/grpc.Service/Method", content=b"\0\0\0\0\0",
                       headers={"Host": f"127.0.0.1:{apps['HTTP/2'].port}", "want-trailers": "1",
                                "content-type": "application/grpc"})
            assert r.status_code == 200
        assert wait_for(lambda: any(e["event"] == "end" for e in sub.events))
        end = next(e for e in sub.events if e["event"] == "end")
        assert end["grpc_status"] == 0 and end["error"] is None
        target = client.TapTarget("", "deployment", "x", "x-0", proxy.addresses["control"], None)
        formatter = client.EventFormatter()
        for event in sub.events[1:]:
            line = formatter.format(target, event)
        assert " grpc-status=OK duration=" in line
    finally:
        sub.close()
