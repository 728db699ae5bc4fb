"""Class 10: Linkerd's timing semantics.

- A service known to have no endpoints: once the fail-fast timeout has passed without one, requests
  are answered 503 at once until endpoints return (Linkerd's failfast), not after waiting the whole
  timeout each.
- Failure accrual on an always-failing single endpoint: a retry goes only to an endpoint ready now,
  so retried requests end with the endpoint's failure (or fail-fast) instead of waiting for the
  route timeout.
- Certificates renew once 70% of the time they had left on arrival has passed, not at 70% of their
  whole lifetime: a short-lived leaf backdated for clock skew renewed at every minimum refresh.

Real parts: the destination service on a registry file, backends and a proxy on loopback
(``tests/traffic/lab.py``), a real identity service; the client measures what it waited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import h2.config
import h2.connection
import h2.events
import pytest

from traffic.lab import Backend, Client, Lab, profile_doc
from traffic.test_traffic_integration import AUTH, WEB, run


async def _h2_request(addr, authority: str) -> tuple[int, float]:
    """One HTTP/2 GET over a fresh connection (h2, an independent client); (status, seconds)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(*addr)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                            (b":authority", authority.encode())], end_stream=True)
    writer.write(conn.data_to_send())
    status = 0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status, time.perf_counter() - start
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    return status, time.perf_counter() - start


def test_a_service_known_to_be_empty_fails_fast_until_endpoints_return(tmp_path):
    async def main():
        backend = await Backend("back").start()
        lab = Lab(tmp_path, env={"MESHCTL_PROXY_OUTBOUND_FAILFAST_TIMEOUT": "1s"})
        await lab.start()
        lab.set_registry({("web", "shop", 8080): []})
        try:
            first = await Client(lab.outbound).request(AUTH)
            assert first.status == 503 and 0.95 <= first.latency < 1.6, first  # waits the fail-fast timeout once
            # Known to be empty now: every request is answered at once, HTTP/1 and HTTP/2 alike
            # (before: each waited the whole second).
            client = Client(lab.outbound)
            for _ in range(10):
                r = await client.request(AUTH)
                assert r.status == 503 and r.latency < 0.2 and "fail-fast" in r.error, r
            for _ in range(3):
                status, seconds = await _h2_request(lab.outbound, AUTH)
                assert status == 503 and seconds < 0.2, (status, seconds)
            # Endpoints return: served at once, and the fail-fast state is over.
            lab.set_registry({("web", "shop", 8080): [backend.address]})
            await asyncio.sleep(0.1)
            r = await client.request(AUTH)
            assert r.status == 200 and r.latency < 0.5, r
            # Empty again: the next request waits the timeout afresh before failing fast.
            lab.set_registry({("web", "shop", 8080): []})
            await asyncio.sleep(0.1)
            again = await client.request(AUTH)
            assert again.status == 503 and 0.95 <= again.latency < 1.6, again
        finally:
            await lab.stop()
            await backend.stop()
    run(main())


def test_retries_to_an_always_failing_endpoint_fail_fast_instead_of_waiting_for_the_route_timeout(tmp_path):
    async def main():
        backend = await Backend("broken", fail_rate=1.0).start()
        route = {"name": "GET /items", "condition": {"method": "GET", "pathRegex": "/items(/.*)?"},
                 "isRetryable": True, "timeout": "5s"}
        lab = Lab(tmp_path, env={"MESHCTL_PROXY_OUTBOUND_FAILFAST_TIMEOUT": "1s"})
        await lab.start()
        lab.set_registry({("web", "shop", 8080): [backend.address]}, [profile_doc(WEB, {"routes": [route]})])
        try:
            client = Client(lab.outbound)
            first = await client.request(AUTH, "/items/1")
            # Seven failures in a row set the one endpoint aside; the retry that would have waited for it
            # (until the route's 5 s timeout: a 504) is not sent, and the endpoint's own failure is the answer.
            assert first.status == 500 and first.latency < 1.0, first
            assert backend.hits == 7
            results = []
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                results.append(await client.request(AUTH, "/items/1"))
            statuses = {r.status for r in results}
            assert 504 not in statuses and statuses <= {500, 503}, [(r.status, r.error) for r in results]
            # Each waits at most for a probe or the 1 s fail-fast, never the 5 s route timeout, and once in
            # fail-fast most are answered at once.
            assert max(r.latency for r in results) < 1.5, [round(r.latency, 2) for r in results]
            assert sum(r.latency < 0.1 for r in results) >= len(results) - 4, [round(r.latency, 2) for r in results]
            # The endpoint saw only the probes after the breaker tripped (1 s, then 2 s backoff).
            assert backend.hits <= 7 + 3
        finally:
            await lab.stop()
            await backend.stop()
    run(main())


def test_renewal_counts_70_percent_of_the_time_left_not_of_the_backdated_lifetime():
    from meshctl_proxy.identity.certificates import next_refresh

    # A 60 s leaf backdated 20 s for clock skew, received now (t=1000): renew in 42 s (70% of 60 s left).
    assert next_refresh(now=1000, not_before=980, not_after=1060, failures=0, min_refresh=10, received=1000) == pytest.approx(42)
    # The same leaf 30 s later (after a restart of the schedule): still due at the same moment.
    assert next_refresh(now=1030, not_before=980, not_after=1060, failures=0, min_refresh=10, received=1000) == pytest.approx(12)
    # Whole-lifetime arithmetic would have said 980 + 56 - 1000 = 36 s; with 4 s leaves and the default
    # 20 s backdating it said "already due": every minimum refresh.
    assert next_refresh(now=1000, not_before=980, not_after=1004, failures=0, min_refresh=0.5,
                        received=1000) == pytest.approx(2.8)


def test_a_short_lived_backdated_leaf_is_renewed_once_per_lifetime_not_at_every_min_refresh(tmp_path):
    from meshctl.identity import certs, service, tokens
    from meshctl.meshconfig import MeshConfig
    from meshctl_proxy.identity.certificates import IdentityManager, IdentitySettings

    names = MeshConfig()
    name = names.identity_name("web", "shop")
    anchor = certs.generate_trust_anchor()
    issuer = certs.generate_issuer(anchor)
    registry = str(tmp_path / "tokens.json")
    token = tokens.add_token(registry, namespace="shop", service_account="web")
    (tmp_path / "token").write_text(token)
    loaded = certs.load_issuer(cert_pem=issuer.cert_pem, key_pem=issuer.key_pem, trust_anchors_pem=anchor.cert_pem)
    # 4 s leaves backdated by the default 20 s clock-skew allowance: 24 s of "lifetime", 4 s of it left.
    authority = service.Authority(loaded, names=names, leaf_lifetime=dt.timedelta(seconds=4),
                                  clock_skew=dt.timedelta(seconds=20))

    async def main():
        server = service.IdentityServer(authority, tokens.LocalTokenRegistry(registry),
                                        service.ServiceSettings(listen_host="127.0.0.1", listen_port=0))
        _, port = await server.start()
        serving = asyncio.create_task(server.serve_forever())
        settings = IdentitySettings(local_name=name, trust_anchors_pem=anchor.cert_pem, svc_host="127.0.0.1",
                                    svc_port=port, svc_name=service.service_identity(names),
                                    token_file=str(tmp_path / "token"), directory=str(tmp_path / "id"),
                                    min_refresh=0.3)
        mgr = IdentityManager(settings)
        runner = asyncio.create_task(mgr.run())
        try:
            await asyncio.wait_for(mgr.wait_ready(), 10)
            first = mgr.current()
            assert first.not_before < first.received - 15  # backdated, as the service does
            await asyncio.sleep(2.0)
            # Renewal is due 2.8 s after arrival (70% of the 4 s left); every 0.3 s before the fix.
            assert mgr.refreshes == 1, mgr.refreshes
            await asyncio.sleep(1.5)
            assert mgr.refreshes == 2 and mgr.current().not_after > first.not_after  # renewed before expiry
        finally:
            runner.cancel()
            serving.cancel()
            await asyncio.gather(runner, serving, return_exceptions=True)
    run(main())

