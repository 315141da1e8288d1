"""Sans-IO capacity counters: a token bucket and an exact rolling window.

Both take ``now`` (monotonic seconds) in every call and share one small interface:
``try_take``, ``time_until``, ``give_back`` (refund) and ``debit`` (forced spend, may go
over the limit, e.g. when real usage exceeds an estimate).

``TokenBucket`` refills continuously at ``rate`` up to ``capacity``: smooth, but a full
bucket plus a minute of refill admits up to twice ``capacity`` in one 60 s window.
``RollingWindow`` gives each spent unit back exactly ``window_s`` after it was spent, so no
window of that length ever holds more than ``limit``: what "N per minute" promises, and
what the rate limiter uses for RPM and TPM.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RollingWindow", "TokenBucket"]


def _until(now: float, when: float) -> float:
    """``when - now``, rounded up so that ``now + result >= when`` holds in floats."""
    wait = max(0.0, when - now)
    while now + wait < when:
        wait = math.nextafter(wait, math.inf)
    return wait


class TokenBucket:
    """Continuous-refill bucket: ``capacity`` units, ``rate`` units per second, starts full."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, capacity: float, rate: float, *, now: float = 0.0) -> None:
        if capacity <= 0 or rate <= 0:
            raise ValueError(f"capacity and rate must be > 0 (got {capacity}, {rate})")
        self.capacity = float(capacity)
        self.rate = float(rate)
        self.level = float(capacity)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.level

    def try_take(self, n: float, now: float) -> bool:
        """Take ``n`` units if they are there now; False (and no change) otherwise."""
        self._refill(now)
        if n <= self.level:
            self.level -= n
            return True
        return False

    def time_until(self, n: float, now: float) -> float:
        """Seconds until ``n`` units are available (``inf`` when ``n > capacity``)."""
        if n > self.capacity:
            return math.inf
        self._refill(now)
        return max(0.0, (n - self.level) / self.rate)

    def give_back(self, n: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + n)

    def debit(self, n: float, now: float) -> None:
        self._refill(now)
        self.level -= n


class RollingWindow:
    """At most ``limit`` units spent in any ``window_s`` seconds; each unit returns
    exactly ``window_s`` after it was spent."""

    __slots__ = ("_spent", "limit", "used", "window_s")

    def __init__(self, limit: float, window_s: float = 60.0) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError(f"limit and window_s must be > 0 (got {limit}, {window_s})")
        self.limit = float(limit)
        self.window_s = float(window_s)
        self.used = 0.0
        self._spent: deque[list[float]] = deque()  # [time, amount], oldest first

    @property
    def capacity(self) -> float:
        return self.limit

    def _expire(self, now: float) -> None:
        spent = self._spent
        window = self.window_s
        while spent and spent[0][0] + window <= now:
            self.used -= spent.popleft()[1]
        if not spent:
            self.used = 0.0  # no float drift when idle

    def available(self, now: float) -> float:
        self._expire(now)
        return self.limit - self.used

    def try_take(self, n: float, now: float) -> bool:
        self._expire(now)
        if self.used + n <= self.limit:
            self._add(n, now)
            return True
        return False

    def time_until(self, n: float, now: float) -> float:
        """Seconds until ``n`` more units fit (``inf`` when ``n > limit``)."""
        if n > self.limit:
            return math.inf
        self._expire(now)
        excess = self.used + n - self.limit
        if excess <= 0:
            return 0.0
        for at, amount in self._spent:
            excess -= amount
            if excess <= 1e-9:
                return _until(now, at + self.window_s)
        return self.window_s  # only reached through float drift

    def time_until_full(self, now: float) -> float:
        """Seconds until everything spent has left the window (0 when nothing is spent)."""
        self._expire(now)
        if not self._spent:
            return 0.0
        return _until(now, self._spent[-1][0] + self.window_s)

    def give_back(self, n: float, now: float) -> None:
        """Refund ``n`` units, newest spend first."""
        self._expire(now)
        spent = self._spent
        while n > 0 and spent:
            last = spent[-1]
            part = min(n, last[1])
            last[1] -= part
            self.used -= part
            n -= part
            if last[1] <= 0:
                spent.pop()
        if not spent:
            self.used = 0.0

    def debit(self, n: float, now: float) -> None:
        self._expire(now)
        self._add(n, now)

    def _add(self, n: float, now: float) -> None:
        if n <= 0:
            return
        spent = self._spent
        if spent and spent[-1][0] == now:
            spent[-1][1] += n
        else:
            spent.append([now, n])
        self.used += n
