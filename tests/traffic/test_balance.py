"""PeakEwmaBalancer and RoundRobinBalancer, driven by a fake clock."""

from __future__ import annotations

import collections
import math
import random

import pytest

from meshctl_proxy.policy.balance import PeakEwmaBalancer, RoundRobinBalancer, make_balancer
from meshctl_proxy.discovery.resolution import WeightedAddr

A, B, C = (WeightedAddr.make("127.0.0.1", p) for p in (9001, 9002, 9003))


def ewma(**kw) -> PeakEwmaBalancer:
    bal = PeakEwmaBalancer(rng=random.Random(7), **kw)
    return bal


def test_new_endpoint_starts_at_30ms():
    bal = ewma()
    bal.update([A])
    assert bal.rtt_estimate(A) == pytest.approx(0.030)
    assert bal.cost(A, 0.0) == pytest.approx(0.030)


def test_slower_sample_is_taken_at_once_faster_decays_with_10s_time_constant():
    bal = ewma()
    bal.update([A])
    ep = bal.acquire(0.0)
    bal.release(ep, 0.0, rtt=0.5, failed=False)
    assert bal.rtt_estimate(A) == pytest.approx(0.5)  # the peak, no blending
    bal.cost(A, 10.0)  # reading the cost decays the estimate: 10 s = one time constant
    ep = bal.acquire(10.0)
    assert bal.rtt_estimate(A) == pytest.approx(0.5 * math.exp(-1))
    bal.release(ep, 10.0, rtt=0.010, failed=False)  # no time since the read: weight 0
    assert bal.rtt_estimate(A) == pytest.approx(0.5 * math.exp(-1))
    bal.cost(A, 20.0)
    assert bal.rtt_estimate(A) == pytest.approx(0.5 * math.exp(-2), rel=1e-6)


def test_faster_sample_blends_by_elapsed_time():
    bal = ewma()
    bal.update([A])
    bal.release(bal.acquire(0.0), 0.0, rtt=0.100, failed=False)
    bal.release(bal.acquire(0.0), 5.0, rtt=0.020, failed=False)
    w = math.exp(-0.5)
    assert bal.rtt_estimate(A) == pytest.approx(0.100 * w + 0.020 * (1 - w))


def test_cost_counts_pending_requests():
    bal = ewma()
    bal.update([A])
    bal.acquire(0.0)
    bal.acquire(0.0)
    assert bal.pending(A) == 2
    assert bal.cost(A, 0.0) == pytest.approx(0.030 * 3)


def test_power_of_two_choices_prefers_the_cheaper_endpoint():
    bal = ewma()
    bal.update([A, B])
    bal.release(bal.acquire(0.0), 0.0, rtt=0.001, failed=False)  # whichever it was
    # Make B slow and A fast explicitly.
    for ep, rtt in ((A, 0.002), (B, 0.8)):
        bal._states[ep.address].rtt = rtt
    picks = collections.Counter()
    for i in range(100):
        ep = bal.acquire(0.0)
        picks[ep] += 1
        bal.release(ep, 0.0, rtt=0.002 if ep == A else 0.8, failed=False)
    assert picks[A] == 100  # with two endpoints both are always compared


def test_slow_endpoint_gets_almost_no_traffic_among_many():
    bal = ewma()
    eps = [WeightedAddr.make("127.0.0.1", 9000 + i) for i in range(5)]
    bal.update(eps)
    slow = eps[2]
    now, picks = 0.0, collections.Counter()
    for i in range(2000):
        now += 0.005
        ep = bal.acquire(now)
        picks[ep] += 1
        bal.release(ep, now, rtt=0.5 if ep == slow else 0.01, failed=False)
    assert picks[slow] < 0.02 * 2000


def test_pending_load_spreads_requests_when_latencies_are_equal():
    bal = ewma()
    bal.update([A, B, C])
    held = [bal.acquire(0.0) for _ in range(30)]
    counts = collections.Counter(held)
    assert all(8 <= counts[e] <= 12 for e in (A, B, C))


def test_idle_slow_endpoint_decays_and_gets_tried_again():
    bal = ewma()
    bal.update([A, B])
    bal._states[A.address].rtt = 0.010
    bal._states[B.address].rtt = 5.0
    assert bal.acquire(0.0) == A
    bal.release(A, 0.0, rtt=0.010, failed=False)
    # Long after, B's decayed estimate is below A's recent one only if A keeps being used;
    # reading both at t=60 decays both towards 0 by the same factor, so compare raw decay.
    assert bal.cost(B, 60.0) == pytest.approx(5.0 * math.exp(-6))


def test_seven_consecutive_failures_set_an_endpoint_aside_then_probe_after_backoff():
    bal = ewma()
    bal.update([A, B])
    bal._states[B.address].rtt = 10.0  # A always preferred while available
    for i in range(6):
        ep = bal.acquire(0.0)
        assert ep == A
        bal.release(ep, 0.0, rtt=0.001, failed=True)
    assert not bal.is_set_aside(A)
    bal.release(bal.acquire(0.0), 0.0, rtt=0.001, failed=True)
    assert bal.is_set_aside(A)
    assert bal.acquire(0.5) == B  # only B is available
    bal.release(B, 0.5, rtt=10.0, failed=False)
    assert bal.wake_at(0.5) == pytest.approx(1.0)
    # After the 1 s backoff A may take exactly one probe.
    probe = bal.acquire(1.0)
    assert probe == A
    assert bal.acquire(1.0) == B  # the probe is in flight: A not offered again
    bal.release(B, 1.0, rtt=10.0, failed=False)
    bal.release(probe, 1.1, rtt=0.001, failed=True)  # probe failed: backoff doubles
    assert bal.is_set_aside(A) and bal.wake_at(1.1) == pytest.approx(3.1)
    assert bal.acquire(3.0) == B
    bal.release(B, 3.0, rtt=10.0, failed=False)
    probe = bal.acquire(3.2)
    assert probe == A
    bal.release(probe, 3.2, rtt=0.001, failed=False)  # success restores it
    assert not bal.is_set_aside(A)
    assert bal.acquire(3.3) == A


def test_success_resets_the_consecutive_count():
    bal = ewma()
    bal.update([A])
    for i in range(20):
        ep = bal.acquire(0.0)
        bal.release(ep, 0.0, rtt=0.001, failed=(i % 7 != 6))
    assert not bal.is_set_aside(A)


def test_all_set_aside_returns_none_until_the_backoff_ends():
    bal = ewma()
    bal.update([A])
    for _ in range(7):
        bal.release(bal.acquire(0.0), 0.0, rtt=None, failed=True)
    assert bal.acquire(0.5) is None
    assert bal.wake_at(0.5) == pytest.approx(1.0)
    assert bal.acquire(1.0) == A


def test_update_keeps_state_and_in_flight_requests_to_removed_endpoints_complete():
    bal = ewma()
    bal.update([A, B])
    bal._states[A.address].rtt = 0.2
    inflight = [bal.acquire(0.0) for _ in range(4)]
    bal.update([A, C])  # B removed, C added, A kept with its estimate
    assert bal.rtt_estimate(A) == pytest.approx(0.2)
    assert bal.rtt_estimate(C) == pytest.approx(0.030)
    assert B not in bal.endpoints() and len(bal) == 2
    for ep in inflight:
        bal.release(ep, 0.1, rtt=0.01, failed=False)  # no error for B
    assert bal.pending(B) == 0 and bal.pending(A) == 0
    for _ in range(50):
        ep = bal.acquire(1.0)
        assert ep in (A, C)
        bal.release(ep, 1.0, rtt=0.01, failed=False)


def test_readding_a_removed_endpoint_with_requests_in_flight_keeps_its_pending_count():
    bal = ewma()
    bal.update([A])
    bal.acquire(0.0)
    bal.update([])
    assert bal.acquire(0.0) is None
    bal.update([A])
    assert bal.pending(A) == 1


def test_metadata_change_is_picked_up():
    bal = ewma()
    bal.update([A])
    a2 = WeightedAddr.make("127.0.0.1", 9001, identity="web.shop.serviceaccount.identity.meshctl.cluster.local")
    bal.update([a2])
    assert bal.acquire(0.0).identity.startswith("web.shop")


def test_round_robin_cycles_blind_to_latency():
    bal = RoundRobinBalancer()
    bal.update([A, B, C])
    seen = []
    for _ in range(6):
        ep = bal.acquire(0.0)
        seen.append(ep)
        bal.release(ep, 0.0, rtt=5.0 if ep == B else 0.001, failed=False)
    assert seen == [A, B, C, A, B, C]


def test_make_balancer_follows_the_config_names():
    from meshctl_proxy import config
    for name in config.BALANCERS:
        assert make_balancer(name) is not None
    assert isinstance(make_balancer("peak-ewma"), PeakEwmaBalancer)
    with pytest.raises(ValueError):
        make_balancer("random")
