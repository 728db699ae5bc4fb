"""Without identity, tap is served to loopback peers only: a neighbour pod is refused.

A real proxy in one lab pod (network namespace), its control listener on
0.0.0.0:4190 as inject renders it; a client in the same pod (loopback) and one
in another pod (over the lab's bridge) subscribe with the CLI's client.
"""

from __future__ import annotations

import sys

from netns import wait_for_listener

SUBSCRIBE = """
import asyncio, sys
from meshctl.viz import tap

async def main():
    target = tap.TapTarget("shop", "deployment", "web", "web-0", (sys.argv[1], 4190), None)
    try:
        async for event in tap.subscribe(target, tap.TapQuery(), None):
            print("subscribed", event["event"])
            return
    except tap.TapError as exc:
        print("refused", exc)

asyncio.run(main())
"""


def test_loopback_subscribes_and_a_neighbour_is_refused(netns_lab):
    web, other = netns_lab.pod("web"), netns_lab.pod("other")
    web.popen([sys.executable, "-m", "meshctl_proxy"], env={
        "MESHCTL_PROXY_IDENTITY_DISABLED": "true", "MESHCTL_PROXY_LOG_LEVEL": "warn",
        "MESHCTL_PROXY_DESTINATION_SVC_ADDR": "127.0.0.1:9"})
    wait_for_listener(web, 4190)
    local = web.python(SUBSCRIBE, "127.0.0.1").stdout
    assert local.strip() == "subscribed hello"
    remote = other.python(SUBSCRIBE, web.ip).stdout
    assert remote.strip() == (f"refused deploy/web ({web.ip}:4190) refused tap: 403 tap without identity is "
                              f"served to loopback peers only, not {other.ip}")
    metrics = web.run(["curl", "-s", "http://127.0.0.1:4191/metrics"]).stdout
    assert 'tap_subscriptions_refused_total{reason="forbidden"} 1' in metrics
