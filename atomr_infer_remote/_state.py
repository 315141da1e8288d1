"""Shared state by key: rate limiters, breakers and spend windows.

The embedded default keeps everything in this process. The interface is I/O-shaped
(spend windows are async) so that a Redis backend shared by several gateway processes
can implement the same protocol later.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import trio

from atomr_infer_core import (
    CircuitBreakerConfig,
    RateLimits,
    StateBackendKind,
    StateConfig,
    StateMode,
)
from atomr_infer_core.errors import ConfigError

from ._breaker import CircuitBreaker
from ._ledger import SpendLedger
from ._limiter import RateLimiter

#: the longest budget window (a day): older spend is never asked about
_LONGEST_WINDOW = 86400.0

__all__ = [
    "MemorySpendWindow",
    "MemoryStateBackend",
    "SpendLog",
    "SpendWindow",
    "StateBackend",
    "open_state_backend",
]


@runtime_checkable
class SpendWindow(Protocol):
    """Spend (e.g. USD) over a rolling window; every method is atomic."""

    async def reserve(self, amount: float, *, limit: float, window_s: float, now: float) -> bool:
        """Add ``amount`` if the window's total stays within ``limit``; else change nothing."""
        ...

    async def adjust(self, delta: float, *, now: float, reserved_at: float) -> None:
        """Settle the reservation made at ``reserved_at``: add real cost minus the
        reservation. A negative ``delta`` releases spend from that reservation only
        (never from anyone else's); a positive one is new spend at ``now``."""
        ...

    async def total(self, *, window_s: float, now: float) -> float: ...

    async def earliest_room(
        self, amount: float, *, limit: float, window_s: float, now: float
    ) -> float | None:
        """The earliest time (same clock as ``now``) ``amount`` fits, or None if never."""
        ...


@runtime_checkable
class StateBackend(Protocol):
    """Limiters, breakers and spend windows by key; the same key gives the same object."""

    def limiter(self, key: str, limits: RateLimits, *, name: str | None = None) -> RateLimiter: ...

    def breaker(
        self,
        key: str,
        config: CircuitBreakerConfig,
        *,
        provider: str = "custom",
        name: str | None = None,
    ) -> CircuitBreaker: ...

    def window(self, key: str) -> SpendWindow: ...


class SpendLog:
    """Sans-IO spend over rolling windows: ``[time, amount]`` entries, oldest first.

    Entries older than the longest window asked about are dropped. A refund comes out
    of the entry of the reservation it settles, so a released reservation never makes
    room that an older, still-running one occupies.
    """

    __slots__ = ("_horizon", "_spent")

    def __init__(self) -> None:
        self._spent: deque[list[float]] = deque()
        self._horizon = 0.0  # the longest window_s seen

    def _expire(self, window_s: float, now: float) -> None:
        self._horizon = max(self._horizon, window_s)
        spent = self._spent
        while spent and spent[0][0] + self._horizon <= now:
            spent.popleft()

    def total(self, window_s: float, now: float) -> float:
        self._expire(window_s, now)
        return sum(a for t, a in self._spent if t + window_s > now)

    def reserve(self, amount: float, limit: float, window_s: float, now: float) -> bool:
        if amount < 0:
            raise ValueError(f"a reservation must be >= 0 (got {amount})")
        if self.total(window_s, now) + amount > limit:
            return False
        self._spent.append([now, amount])
        return True

    def adjust(self, delta: float, now: float, reserved_at: float) -> float:
        """Settle; returns what changed (a refund is capped by what the entry holds)."""
        if delta >= 0:
            if delta:
                self._spent.append([now, delta])
            return delta
        refund = -delta
        spent = self._spent
        for index in range(len(spent) - 1, -1, -1):
            if refund <= 0:
                break
            entry = spent[index]
            if entry[0] < reserved_at:
                break
            if entry[0] == reserved_at:
                part = min(refund, entry[1])
                entry[1] -= part
                refund -= part
                if entry[1] <= 0:
                    del spent[index]
        return delta + refund

    def load(self, entries: list[tuple[float, float]]) -> None:
        """Add spend from before a restart (``(time, amount)``, oldest first)."""
        self._spent.extendleft(reversed([[t, a] for t, a in entries]))

    def earliest_room(
        self, amount: float, limit: float, window_s: float, now: float
    ) -> float | None:
        if amount > limit:
            return None
        excess = self.total(window_s, now) + amount - limit
        if excess <= 0:
            return now
        for at, spent in self._spent:
            if at + window_s <= now:
                continue
            excess -= spent
            if excess <= 1e-12:
                return at + window_s
        return math.inf  # unreachable but for float drift


class MemorySpendWindow:
    """In-process :class:`SpendWindow` over a :class:`SpendLog`; with a ledger, what
    it spent is also written there, and read back by the next process."""

    def __init__(self, ledger: SpendLedger | None = None, key: str = "") -> None:
        self.log = SpendLog()
        self._ledger = ledger
        self._key = key
        self._loaded = ledger is None

    def _restore(self, now: float) -> None:
        if not self._loaded and self._ledger is not None:
            self._loaded = True
            self.log.load(self._ledger.load(self._key, since=now - _LONGEST_WINDOW))

    async def reserve(self, amount: float, *, limit: float, window_s: float, now: float) -> bool:
        await trio.lowlevel.checkpoint()
        self._restore(now)
        taken = self.log.reserve(amount, limit, window_s, now)
        if taken and self._ledger is not None:
            self._ledger.record(self._key, now, amount)
        return taken

    async def adjust(self, delta: float, *, now: float, reserved_at: float) -> None:
        await trio.lowlevel.checkpoint()
        self._restore(now)
        changed = self.log.adjust(delta, now, reserved_at)
        if self._ledger is not None:
            self._ledger.record(self._key, reserved_at if changed < 0 else now, changed)

    async def total(self, *, window_s: float, now: float) -> float:
        await trio.lowlevel.checkpoint()
        self._restore(now)
        return self.log.total(window_s, now)

    async def earliest_room(
        self, amount: float, *, limit: float, window_s: float, now: float
    ) -> float | None:
        await trio.lowlevel.checkpoint()
        self._restore(now)
        return self.log.earliest_room(amount, limit, window_s, now)


class MemoryStateBackend:
    """The embedded default: state shared by the tasks of one process."""

    #: limits hold per process (``fleet`` for a shared backend)
    scope = "process"

    def __init__(self, ledger: SpendLedger | None = None) -> None:
        self.ledger = ledger
        self._limiters: dict[str, RateLimiter] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._windows: dict[str, MemorySpendWindow] = {}

    def limiter(self, key: str, limits: RateLimits, *, name: str | None = None) -> RateLimiter:
        """The limiter stored under ``key``; ``name`` is what errors and logs call it."""
        found = self._limiters.get(key)
        if found is None:
            found = self._limiters[key] = RateLimiter(limits, name=name or key)
        elif found.limits != limits:
            raise ConfigError([(key, f"rate limiter already exists with {found.limits}")])
        return found

    def breaker(
        self,
        key: str,
        config: CircuitBreakerConfig,
        *,
        provider: str = "custom",
        name: str | None = None,
    ) -> CircuitBreaker:
        """The breaker stored under ``key``; ``name`` is what errors and logs call it."""
        found = self._breakers.get(key)
        if found is None:
            found = self._breakers[key] = CircuitBreaker(
                config, name=name or key, provider=provider
            )
        elif found.config != config:
            raise ConfigError([(key, f"circuit breaker already exists with {found.config}")])
        return found

    def window(self, key: str) -> MemorySpendWindow:
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = MemorySpendWindow(self.ledger, key)
        return found

    def record_cost(self, deployment: str, at: float, amount: float) -> None:
        """Note spend of ``deployment`` for the cost report (kept only with a ledger)."""
        if self.ledger is not None:
            self.ledger.record(f"cost:{deployment}", at, amount)

    def record_tenant_cost(self, tenant: str, at: float, amount: float) -> None:
        """Note spend of tenant (``[[key]]``) ``tenant`` for the cost report (ledger only)."""
        if self.ledger is not None:
            self.ledger.record(f"tenant-cost:{tenant}", at, amount)


@asynccontextmanager
async def open_state_backend(config: StateConfig) -> AsyncIterator[StateBackend]:
    """The state backend ``config`` asks for, for the lifetime of the block.

    ``memory``: this process only. ``redis``: shared by every process on the server
    (see ``_redis``); needs the ``redis`` extra (coredis). ``mode = "approximate"`` is
    refused with a ``ConfigError``: only ``strict`` is built so far.
    """
    kind = StateBackendKind(config.backend)
    if kind is StateBackendKind.REDIS:
        if StateMode(config.mode) is not StateMode.STRICT:
            raise ConfigError(
                [
                    (
                        "state.mode",
                        'only mode = "strict" is available in this version (one atomic '
                        "script per operation); remove the key or set it to strict",
                    )
                ]
            )
        try:
            from ._redis import open_redis_state
        except ImportError as exc:  # pragma: no cover - the extra is in the lock
            raise ConfigError(
                [("state.backend", f"needs coredis: pip install 'atomr-infer-trio[redis]' ({exc})")]
            ) from None
        async with open_redis_state(config) as backend:
            yield backend
        return
    if not config.spend_ledger:
        await trio.lowlevel.checkpoint()
        yield MemoryStateBackend()
        return
    try:
        ledger = SpendLedger(config.spend_ledger)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            [
                (
                    "state.spend_ledger",
                    f"cannot open the spend ledger {config.spend_ledger}: {exc}; point "
                    'spend_ledger at a writable file, or set spend_ledger = "" to keep '
                    "spend in memory only (a restart then resets every budget)",
                )
            ]
        ) from None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_flush_every_second, ledger)
            try:
                yield MemoryStateBackend(ledger)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        ledger.close()


async def _flush_every_second(ledger: SpendLedger) -> None:
    while True:
        await trio.sleep(1.0)
        ledger.flush()
        ledger.prune("budget:", time.time() - 2 * _LONGEST_WINDOW)
        ledger.prune("tenant-budget:", time.time() - 2 * _LONGEST_WINDOW)
