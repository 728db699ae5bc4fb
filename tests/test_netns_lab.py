"""The network-namespace lab itself: isolated, connected, and cleaned up."""

from __future__ import annotations

import os
import subprocess

import pytest

import netns
from netns import REPORTER, Lab, probe, wait_for_listener

pytestmark = pytest.mark.netns


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_pods_reach_each_other_and_nothing_else(netns_lab):
    a, b = netns_lab.pod("a"), netns_lab.pod("b")
    b.python_popen(REPORTER, "7000")
    wait_for_listener(b, 7000)
    assert [r["port"] for r in probe(a, (b.ip, 7000), (b.ip6, 7000))] == [7000, 7000]
    # A pod knows only its own subnet: no default route, so no way to the host
    # or beyond (a route lookup sends nothing).
    routes = a.run(["ip", "-4", "route"]).stdout
    assert routes.split() == [str(netns.V4_NET), "dev", "eth0", "proto", "kernel", "scope", "link", "src", a.ip]
    lookup = a.run(["ip", "route", "get", "192.0.2.1"], check=False)
    assert lookup.returncode != 0 and "unreachable" in lookup.stderr
    # The bridge namespace holds the bridge and the pods' veth ends, nothing else.
    links = netns_lab.bridge.run(["ip", "-o", "link"]).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    assert names == ["br0", "lo", "v2", "v3"]


def test_close_kills_processes_and_deletes_namespaces():
    with Lab() as lab:
        pod = lab.pod("p")
        proc = pod.popen(["sleep", "60"])
        names = {lab.bridge.name, pod.name}
        assert names <= _namespaces()
    assert proc.poll() is not None
    assert not names & _namespaces()


def test_stale_namespaces_of_dead_runs_are_removed():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.PREFIX}{dead.pid}-0-br"
    live = f"{netns.PREFIX}{os.getpid()}-999-br"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", live], check=True)
    try:
        removed = netns.remove_stale_namespaces()
        assert stale in removed and live not in removed
        assert stale not in _namespaces() and live in _namespaces()
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
