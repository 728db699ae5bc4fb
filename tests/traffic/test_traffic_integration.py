"""The outbound traffic path end to end on loopback: real backends, a real
destination service on a registry file, a real proxy, bounded loads."""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.request

import pytest

from .lab import Backend, Client, Lab, load, profile_doc

WEB = "web.shop.svc.cluster.local"
AUTH = f"{WEB}:8080"


def run(coro, timeout: float = 60):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


async def lab_with(tmp_path, backends, *, profiles=(), balancer="peak-ewma", env=None, services=None):
    for b in backends:
        await b.start()
    lab = Lab(tmp_path, balancer=balancer, env=env)
    await lab.start()
    lab.set_registry(services or {("web", "shop", 8080): [b.address for b in backends]}, list(profiles))
    return lab


async def teardown(lab, backends):
    await lab.stop()
    for b in backends:
        await b.stop()


def test_requests_are_balanced_over_the_endpoints_and_unknown_names_go_direct(tmp_path):
    async def main():
        backends = [Backend(f"b{i}") for i in range(3)]
        lab = await lab_with(tmp_path, backends)
        try:
            results = await load(lab.outbound, AUTH, requests=150, concurrency=6)
            assert [r.status for r in results] == [200] * 150
            hits = collections.Counter(r.backend for r in results)
            assert set(hits) == {"b0", "b1", "b2"} and min(hits.values()) >= 20
            # A name the mesh does not know is forwarded as addressed.
            r = await Client(lab.outbound).request(backends[0].address)
            assert r.status == 200 and r.backend == "b0"
            admin = lab.proxy.addresses["admin"]
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/metrics", timeout=5).read().decode())
            assert f'route_request_total{{direction="outbound",dst="{AUTH}",rt_route="[DEFAULT]"' in text
            assert f'route_actual_response_total{{direction="outbound",dst="{AUTH}",rt_route="[DEFAULT]"' in text
            line = next(ln for ln in text.splitlines() if ln.startswith("route_request_total{"))
            assert line.endswith(" 150")
        finally:
            await teardown(lab, backends)
    run(main())


def test_slow_endpoint_gets_almost_no_traffic_within_seconds(tmp_path):
    async def main():
        backends = [Backend("fast0", delay=0.002), Backend("fast1", delay=0.002), Backend("slow", delay=0.25)]
        lab = await lab_with(tmp_path, backends)
        try:
            t0 = time.monotonic()
            results = await load(lab.outbound, AUTH, requests=600, concurrency=6, max_seconds=20)
            elapsed = time.monotonic() - t0
            assert all(r.status == 200 for r in results) and len(results) == 600
            slow = sum(r.backend == "slow" for r in results)
            # Round robin would send 200 here; peak-EWMA learns after the first slow answers.
            assert slow <= 15, slow
            assert elapsed < 10
        finally:
            await teardown(lab, backends)
    run(main())


def test_endpoint_removed_mid_load_loses_no_request(tmp_path):
    async def main():
        backends = [Backend(f"b{i}", delay=0.005) for i in range(3)]
        lab = await lab_with(tmp_path, backends)
        try:
            task = asyncio.ensure_future(load(lab.outbound, AUTH, requests=900, concurrency=8, max_seconds=30))
            while backends[2].hits < 60:
                await asyncio.sleep(0.01)
            lab.set_registry({("web", "shop", 8080): [backends[0].address, backends[1].address]})
            await asyncio.sleep(0.3)  # propagation; in-flight requests to b2 finish normally
            hits_after_removal = backends[2].hits
            await backends[2].stop()  # the pod goes away after its grace period
            results = await task
            assert len(results) == 900
            assert collections.Counter(r.status for r in results) == {200: 900}
            assert backends[2].hits == hits_after_removal  # nothing sent to it once removed
        finally:
            await teardown(lab, backends)
    run(main())


def retry_profile(timeout=None, budget=None, retryable=True):
    route = {"name": "GET /items", "condition": {"method": "GET", "pathRegex": "/items(/.*)?"},
             "isRetryable": retryable}
    post = {"name": "POST /items", "condition": {"method": "POST", "pathRegex": "/items"}, "isRetryable": retryable}
    if timeout:
        route["timeout"] = timeout
    spec = {"routes": [route, post]}
    if budget:
        spec["retryBudget"] = budget
    return profile_doc(WEB, spec)


def test_failing_backend_behind_retryable_route_gets_the_success_rate_the_budget_predicts(tmp_path):
    async def main():
        backend = Backend("flaky", fail_rate=0.3, seed=42)
        budget = {"retryRatio": 0.2, "minRetriesPerSecond": 0, "ttl": "10s"}
        lab = await lab_with(tmp_path, [backend], profiles=[retry_profile(budget=budget)])
        try:
            n = 2000
            results = await load(lab.outbound, AUTH, path="/items/1", requests=n, concurrency=8, max_seconds=40)
            assert len(results) == n
            ok = sum(r.status == 200 for r in results) / n
            retries = backend.hits - n
            # Budget: retries <= 0.2 x requests within the ttl (the run is shorter than the ttl,
            # nothing expires).  Failures want 0.3/(1-0.3) = 0.43 retries per request, so the
            # budget binds: retries = 0.2 n, each succeeding with p = 0.7, success = 0.7 + 0.7*0.2 = 0.84.
            assert retries <= 0.2 * n
            assert retries >= 0.19 * n
            assert 0.81 <= ok <= 0.87, ok
            text = lab.metrics_text()
            actual = f'route_actual_request_total{{direction="outbound",dst="{AUTH}",rt_route="GET /items"}} {backend.hits}'
            assert actual in text
            assert f'route_request_total{{direction="outbound",dst="{AUTH}",rt_route="GET /items"}} {n}' in text
        finally:
            await teardown(lab, [backend])
    run(main())


def test_retries_replay_small_bodies_and_never_large_or_non_retryable(tmp_path):
    async def main():
        backend = Backend("broken", fail_rate=1.0)
        # A reserve of 3 retries, and 6 failures in all: below the 7 that set an endpoint aside.
        budget = {"retryRatio": 0.0, "minRetriesPerSecond": 1, "ttl": "3s"}
        lab = await lab_with(tmp_path, [backend], profiles=[retry_profile(budget=budget)])
        try:
            c = Client(lab.outbound)
            r = await c.request(AUTH, "/items", method="POST", body=b"x" * 1000)
            assert r.status == 500
            assert backend.hits == 4 and all(b == b"x" * 1000 for b in backend.bodies)  # 1 + the 3 in reserve
            backend.hits = 0
            r = await c.request(AUTH, "/items", method="POST", body=b"y" * (64 * 1024 + 1))
            assert r.status == 500 and backend.hits == 1  # too large to buffer: sent once
            backend.hits = 0
            r = await c.request(AUTH, "/other")
            assert r.status == 500 and backend.hits == 1  # default route: not retryable
        finally:
            await teardown(lab, [backend])
    run(main())


def test_timeout_fires_on_time_and_bounds_retries(tmp_path):
    async def main():
        backend = Backend("slow", delay=1.0)
        lab = await lab_with(tmp_path, [backend], profiles=[retry_profile(timeout="200ms")])
        try:
            c = Client(lab.outbound)
            r = await c.request(AUTH, "/items/1")
            assert r.status == 504 and r.error == "request timeout"
            assert 0.19 <= r.latency < 0.5, r.latency  # on time: not the backend's 1 s
            assert backend.hits == 1
        finally:
            await teardown(lab, [backend])
    run(main())


def test_changed_profile_applies_on_the_next_request(tmp_path):
    async def main():
        backend = Backend("b", delay=0.3)
        lab = await lab_with(tmp_path, [backend])
        try:
            c = Client(lab.outbound)
            assert (await c.request(AUTH, "/items/1")).status == 200
            lab.set_registry({("web", "shop", 8080): [backend.address]}, [retry_profile(timeout="100ms")])
            await asyncio.sleep(0.2)
            r = await c.request(AUTH, "/items/1")
            assert r.status == 504 and r.error == "request timeout" and r.latency < 0.3
        finally:
            await teardown(lab, [backend])
    run(main())


def test_weight_change_shifts_traffic_in_proportion(tmp_path):
    async def main():
        v1, v2 = Backend("v1"), Backend("v2")
        services = {("web", "shop", 8080): [], ("web-v1", "shop", 8080): [], ("web-v2", "shop", 8080): []}

        def split(w1, w2):
            return [profile_doc(WEB, {"dstOverrides": [
                {"authority": f"web-v1.shop.svc.cluster.local:8080", "weight": w1},
                {"authority": f"web-v2.shop.svc.cluster.local:8080", "weight": w2}]})]

        for b in (v1, v2):
            await b.start()
        lab = Lab(tmp_path)
        await lab.start()
        services = {("web", "shop", 8080): [], ("web-v1", "shop", 8080): [v1.address],
                    ("web-v2", "shop", 8080): [v2.address]}
        lab.set_registry(services, split(90, 10))
        try:
            results = await load(lab.outbound, AUTH, requests=1000, concurrency=8)
            share = sum(r.backend == "v2" for r in results) / len(results)
            assert all(r.status == 200 for r in results)
            assert 0.07 <= share <= 0.13, share
            lab.set_registry(services, split("250m", "750m"))
            await asyncio.sleep(0.2)
            results = await load(lab.outbound, AUTH, requests=1000, concurrency=8)
            share = sum(r.backend == "v2" for r in results) / len(results)
            assert 0.71 <= share <= 0.79, share
            text = lab.metrics_text()
            assert 'route_actual_request_total{direction="outbound",dst="web-v2.shop.svc.cluster.local:8080"' in text
        finally:
            await teardown(lab, [v1, v2])
    run(main())


def test_destination_service_killed_mid_traffic_leaves_traffic_flowing(tmp_path):
    async def main():
        backends = [Backend(f"b{i}", delay=0.002) for i in range(2)]
        lab = await lab_with(tmp_path, backends)
        try:
            task = asyncio.ensure_future(load(lab.outbound, AUTH, requests=800, concurrency=6, rate=400,
                                              max_seconds=20))
            await asyncio.sleep(0.5)
            await lab.stop_destination()
            results = await task
            assert len(results) == 800
            assert collections.Counter(r.status for r in results) == {200: 800}
            assert min(b.hits for b in backends) > 100  # still balanced over the last known set
            assert lab.router.client.reconnects >= 1  # it noticed, and keeps trying
        finally:
            await teardown(lab, backends)
    run(main())


def test_no_endpoints_waits_in_a_bounded_queue_then_fails_fast(tmp_path):
    async def main():
        backend = Backend("late")
        await backend.start()
        lab = Lab(tmp_path, env={"MESHCTL_PROXY_OUTBOUND_FAILFAST_TIMEOUT": "400ms",
                                 "MESHCTL_PROXY_OUTBOUND_BUFFER_CAPACITY": "2"})
        await lab.start()
        lab.set_registry({("web", "shop", 8080): []})
        try:
            # Endpoints that appear while a request waits serve it.
            pending = asyncio.ensure_future(Client(lab.outbound).request(AUTH))
            await asyncio.sleep(0.1)
            lab.set_registry({("web", "shop", 8080): [backend.address]})
            r = await pending
            assert r.status == 200 and r.latency < 0.39  # served before its 0.4 s fail-fast
            lab.set_registry({("web", "shop", 8080): []})
            await asyncio.sleep(0.05)
            results = await asyncio.gather(*(Client(lab.outbound).request(AUTH) for _ in range(3)))
            by_latency = sorted(results, key=lambda r: r.latency)
            assert all(r.status == 503 for r in results)
            assert by_latency[0].latency < 0.2 and "too many requests waiting" in by_latency[0].error
            assert all(0.38 <= r.latency < 0.8 and "no endpoints" in r.error for r in by_latency[1:])
            # Known to be empty now (fail-fast): answered at once, until endpoints return (Linkerd's failfast).
            r = await Client(lab.outbound).request(AUTH)
            assert r.status == 503 and r.latency < 0.2 and "fail-fast" in r.error, (r.latency, r.error)
            lab.set_registry({("web", "shop", 8080): [backend.address]})
            await asyncio.sleep(0.05)
            assert (await Client(lab.outbound).request(AUTH)).status == 200
        finally:
            await teardown(lab, [backend])
    run(main())


def test_an_endpoint_that_keeps_failing_is_set_aside(tmp_path):
    async def main():
        backends = [Backend(f"b{i}") for i in range(3)]
        lab = await lab_with(tmp_path, backends)
        await backends[2].stop()  # still listed, refuses connections
        try:
            results = await load(lab.outbound, AUTH, requests=400, concurrency=4, max_seconds=20)
            failed = [r for r in results if r.status != 200]
            # Seven consecutive failures set it aside (the default route is not retried); up to
            # three more were already in flight (4 connections), and each probe after a backoff
            # (1 s, then 2 s, 4 s, ...) fails once more: a handful in all, and rare at the end.
            assert 7 <= len(failed) <= 14, [r.error for r in failed]
            assert all(r.status == 502 for r in failed)
            assert sum(r.status != 200 for r in results[-200:]) <= 2
        finally:
            await teardown(lab, backends)
    run(main())


def test_requests_queued_behind_a_set_aside_endpoint_go_as_soon_as_its_probe_succeeds(tmp_path):
    async def main():
        backend = Backend("only", fail_rate=1.0)
        lab = await lab_with(tmp_path, [backend])
        try:
            c = Client(lab.outbound)
            for _ in range(7):  # seven failures in a row: set aside for 1 s
                assert (await c.request(AUTH)).status == 500
            backend.fail_rate = 0.0
            results = await asyncio.gather(*(Client(lab.outbound).request(AUTH) for _ in range(5)))
            assert [r.status for r in results] == [200] * 5
            # One probe after the 1 s backoff; the rest follow it at once, not at the 3 s fail-fast.
            assert max(r.latency for r in results) < 2.0, [r.latency for r in results]
        finally:
            await teardown(lab, [backend])
    run(main())
