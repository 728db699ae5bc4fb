"""RetryBudget: Finagle/tower semantics under a fake clock."""

from __future__ import annotations

import pytest

from meshctl_proxy.policy.retry_budget import RetryBudget


def drain(budget: RetryBudget, now: float) -> int:
    n = 0
    while budget.try_withdraw(now):
        n += 1
        assert n < 100_000
    return n


def test_reserve_is_min_retries_per_second_times_ttl():
    assert drain(RetryBudget(retry_ratio=0.0, min_retries_per_second=10, ttl=10), 0.0) == 100
    assert drain(RetryBudget(retry_ratio=0.0, min_retries_per_second=0, ttl=10), 0.0) == 0


def test_each_request_earns_retry_ratio_of_a_retry():
    b = RetryBudget(retry_ratio=0.2, min_retries_per_second=0, ttl=10)
    for _ in range(5):
        b.deposit(0.0)
    assert b.try_withdraw(0.0)
    assert not b.try_withdraw(0.0)
    for _ in range(1000):
        b.deposit(1.0)
    assert drain(b, 1.0) == 200


def test_deposits_expire_after_ttl():
    b = RetryBudget(retry_ratio=0.5, min_retries_per_second=0, ttl=10)
    for _ in range(100):
        b.deposit(0.0)
    assert b.balance(9.5) == pytest.approx(50)
    assert b.balance(10.0) == 0  # the whole window has passed
    assert not b.try_withdraw(10.0)


def test_withdrawals_expire_too_so_the_reserve_refills():
    b = RetryBudget(retry_ratio=0.0, min_retries_per_second=1, ttl=10)
    assert drain(b, 0.0) == 10
    assert not b.try_withdraw(5.0)
    assert drain(b, 10.0) == 10


@pytest.mark.parametrize("ratio,min_rps,ttl", [(0.2, 10, 10), (0.5, 1, 3), (0.1, 0, 5)])
def test_retries_never_exceed_the_budget_in_any_window(ratio, min_rps, ttl):
    """A steady stream that always wants to retry: over each ttl window
    retries <= min_rps*ttl + ratio*requests."""
    b = RetryBudget(retry_ratio=ratio, min_retries_per_second=min_rps, ttl=ttl)
    events = []  # (time, kind)
    t = 0.0
    while t < 6 * ttl:
        b.deposit(t)
        events.append((t, "req"))
        if b.try_withdraw(t):
            events.append((t, "retry"))
        t += 0.01
    step = ttl / 10
    start = 0.0
    while start + ttl <= 6 * ttl:
        reqs = sum(1 for (et, k) in events if k == "req" and start <= et < start + ttl)
        retries = sum(1 for (et, k) in events if k == "retry" and start <= et < start + ttl)
        assert retries <= min_rps * ttl + ratio * reqs + 1e-9
        start += step
    # and the budget is actually used: in steady state retries approach ratio*requests
    late_reqs = sum(1 for (et, k) in events if k == "req" and et >= 3 * ttl)
    late_retries = sum(1 for (et, k) in events if k == "retry" and et >= 3 * ttl)
    assert late_retries >= 0.9 * ratio * late_reqs


def test_bad_parameters_are_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="ttl"):
        RetryBudget(ttl=0.1)
    with pytest.raises(ValueError, match="retryRatio"):
        RetryBudget(retry_ratio=-1)
    with pytest.raises(ValueError, match="minRetriesPerSecond"):
        RetryBudget(min_retries_per_second=-1)
