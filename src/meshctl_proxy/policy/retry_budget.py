"""The retry budget, sans-IO (Finagle's ``RetryBudget``, as tower and Linkerd use it).

Every original request deposits ``retry_ratio`` of a retry; every retry
withdraws one.  Deposits and withdrawals expire after ``ttl``, and a constant
reserve of ``min_retries_per_second x ttl`` retries is always there so that a
service with little traffic can still retry.  Hence, in any window of
``ttl`` seconds::

    retries <= min_retries_per_second * ttl + retry_ratio * requests

which is the promise the ServiceProfile's ``retryBudget`` makes to the
upstream: it never sees more than that many extra requests.  Defaults are
Linkerd's: 0.2, 10 per second, 10 s.

Arithmetic is in integer milli-retries (Finagle scales by 1000 too) so that
five requests at 0.2 make exactly one retry, with no float rounding.  The
window is kept as ten slots of ``ttl / 10`` (tower keeps ten generations),
so entries expire between ``0.9 x ttl`` and ``ttl`` after they were made.
"""

from __future__ import annotations

import collections
import math

SCALE = 1000
SLOTS = 10
DEFAULT_RETRY_RATIO = 0.2
DEFAULT_MIN_RETRIES_PER_SECOND = 10
DEFAULT_TTL = 10.0


class RetryBudget:
    __slots__ = ("retry_ratio", "min_retries_per_second", "ttl", "_deposit", "_reserve", "_slot_len",
                 "_slots", "_sum")

    def __init__(self, *, retry_ratio: float = DEFAULT_RETRY_RATIO,
                 min_retries_per_second: float = DEFAULT_MIN_RETRIES_PER_SECOND,
                 ttl: float = DEFAULT_TTL) -> None:
        if not 0.0 <= retry_ratio <= 1000.0:
            raise ValueError(f"retryRatio must be between 0 and 1000, got {retry_ratio}")
        if min_retries_per_second < 0:
            raise ValueError(f"minRetriesPerSecond must not be negative, got {min_retries_per_second}")
        if not 1.0 <= ttl <= 60.0:  # tower's limits on the budget's ttl
            raise ValueError(f"ttl must be between 1s and 60s, got {ttl}s")
        self.retry_ratio = retry_ratio
        self.min_retries_per_second = min_retries_per_second
        self.ttl = ttl
        self._deposit = round(retry_ratio * SCALE)
        self._reserve = round(min_retries_per_second * ttl * SCALE)
        self._slot_len = ttl / SLOTS
        self._slots: collections.deque[list[int]] = collections.deque()  # [slot index, milli-retries]
        self._sum = 0

    def _expire(self, now: float) -> int:
        idx = math.floor(now / self._slot_len)
        while self._slots and self._slots[0][0] <= idx - SLOTS:
            self._sum -= self._slots.popleft()[1]
        return idx

    def _add(self, idx: int, amount: int) -> None:
        if self._slots and self._slots[-1][0] >= idx:
            self._slots[-1][1] += amount  # time never runs backwards here; a late call joins the newest slot
        else:
            self._slots.append([idx, amount])
        self._sum += amount

    def deposit(self, now: float) -> None:
        """An original request was sent: it earns ``retry_ratio`` of a retry."""
        idx = self._expire(now)
        if self._deposit:
            self._add(idx, self._deposit)

    def try_withdraw(self, now: float) -> bool:
        """May a retry be sent now?  If so it is counted against the budget."""
        idx = self._expire(now)
        if self._reserve + self._sum < SCALE:
            return False
        self._add(idx, -SCALE)
        return True

    def balance(self, now: float) -> float:
        """Retries available now (for metrics and tests)."""
        self._expire(now)
        return (self._reserve + self._sum) / SCALE

    def same_parameters(self, *, retry_ratio: float, min_retries_per_second: float, ttl: float) -> bool:
        return (self.retry_ratio, self.min_retries_per_second, self.ttl) == (retry_ratio, min_retries_per_second, ttl)
