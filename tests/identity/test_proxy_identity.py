"""The proxy's certificate lifecycle: schedule, readiness, renewal, fail-closed."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from helpers_identity import anchor, issuer, identity_settings, make_authority, running_service  # noqa: F401 (fixtures)
from meshctl.identity import tokens
from meshctl_proxy.identity.certificates import IdentityManager, next_refresh

WEB = "web.shop.serviceaccount.identity.meshctl.cluster.local"


def test_first_certificate_is_fetched_at_once_then_fast_retries_capped_at_min_refresh():
    assert next_refresh(now=0, not_before=None, not_after=None, failures=0, min_refresh=10) == 0
    assert next_refresh(now=0, not_before=None, not_after=None, failures=1, min_refresh=10) == pytest.approx(0.2)
    assert next_refresh(now=0, not_before=None, not_after=None, failures=20, min_refresh=10) == 10


def test_renewal_at_70_percent_never_sooner_than_min_refresh():
    assert next_refresh(now=100, not_before=100, not_after=1100, failures=0, min_refresh=10) == pytest.approx(700)
    assert next_refresh(now=100, not_before=100, not_after=110, failures=0, min_refresh=10) == 10


def test_failed_renewals_back_off_but_not_past_expiry_nor_below_min_refresh():
    kw = dict(not_before=0, not_after=1000, min_refresh=10, jitter=lambda: 0.0)
    delays = [next_refresh(now=700, failures=f, **kw) for f in (1, 2, 3, 4, 5, 6)]
    assert delays == [10, 20, 40, 80, 160, 300]  # capped by the 300 s left
    assert next_refresh(now=995, failures=3, **kw) == 10  # 5 s left, still never below min_refresh
    assert next_refresh(now=700, failures=1, retry_after=30, **kw) == 30


async def _until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def test_not_ready_until_certified_renews_and_fails_closed_when_service_is_gone(tmp_path, anchor, issuer):
    registry = str(tmp_path / "tokens.json")
    token = tokens.add_token(registry, namespace="shop", service_account="web")
    # 4 s leaves, renewed at 70% (2.8 s); min refresh 0.5 s so the test is short
    authority = make_authority(anchor, issuer, leaf_lifetime=dt.timedelta(seconds=4), clock_skew=dt.timedelta(0))

    async def main():
        async with running_service(authority, registry) as (server, _, port):
            mgr = IdentityManager(identity_settings(tmp_path, anchor, port, token, name=WEB, min_refresh=0.5))
            assert not mgr.is_ready()
            runner = asyncio.create_task(mgr.run())
            await asyncio.wait_for(mgr.wait_ready(), 10)
            first = mgr.current()
            assert await _until(lambda: mgr.refreshes >= 2, 8)
            assert mgr.current().not_after > first.not_after  # renewed before expiry
        # the service is gone: keep serving on the current certificate until it expires...
        held = mgr.current()
        assert held is not None and mgr.is_ready()
        assert await _until(lambda: mgr.current() is not held or time.time() >= held.not_after - 0.1, 6)
        assert mgr.current() is held or time.time() >= held.not_after, "certificate dropped before expiry"
        # ...then fail closed
        assert await _until(lambda: mgr.current() is None, held.not_after - time.time() + 1)
        assert not mgr.is_ready() and mgr.failures_total >= 1
        runner.cancel()

    asyncio.run(main())
