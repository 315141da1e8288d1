"""Shared state by key: rate limiters, breakers and spend windows.

The embedded default keeps everything in this process. The interface is I/O-shaped
(spend windows are async) so that a Redis backend shared by several gateway processes
can implement the same protocol later.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import trio

from atomr_infer_core import CircuitBreakerConfig, RateLimits, StateBackendKind, StateConfig
from atomr_infer_core.errors import ConfigError

from ._breaker import CircuitBreaker
from ._limiter import RateLimiter

__all__ = [
    "MemorySpendWindow",
    "MemoryStateBackend",
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

    async def adjust(self, delta: float, *, now: float) -> None:
        """Settle: add real cost minus the reservation (negative releases spend)."""
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


class MemorySpendWindow:
    """In-process :class:`SpendWindow`. Entries older than the longest window asked
    about are dropped; a negative adjustment cancels the newest spend first."""

    def __init__(self) -> None:
        self._spent: deque[list[float]] = deque()  # [time, amount], oldest first
        self._horizon = 0.0  # the longest window_s seen

    def _expire(self, window_s: float, now: float) -> None:
        self._horizon = max(self._horizon, window_s)
        spent = self._spent
        while spent and spent[0][0] + self._horizon <= now:
            spent.popleft()

    def _total(self, window_s: float, now: float) -> float:
        self._expire(window_s, now)
        return sum(a for t, a in self._spent if t + window_s > now)

    async def reserve(self, amount: float, *, limit: float, window_s: float, now: float) -> bool:
        await trio.lowlevel.checkpoint()
        if amount < 0:
            raise ValueError(f"a reservation must be >= 0 (got {amount})")
        if self._total(window_s, now) + amount > limit:
            return False
        self._spent.append([now, amount])
        return True

    async def adjust(self, delta: float, *, now: float) -> None:
        await trio.lowlevel.checkpoint()
        if delta >= 0:
            if delta:
                self._spent.append([now, delta])
            return
        refund = -delta
        spent = self._spent
        while refund > 0 and spent:
            last = spent[-1]
            part = min(refund, last[1])
            last[1] -= part
            refund -= part
            if last[1] <= 0:
                spent.pop()

    async def total(self, *, window_s: float, now: float) -> float:
        await trio.lowlevel.checkpoint()
        return self._total(window_s, now)

    async def earliest_room(
        self, amount: float, *, limit: float, window_s: float, now: float
    ) -> float | None:
        await trio.lowlevel.checkpoint()
        if amount > limit:
            return None
        excess = self._total(window_s, now) + amount - limit
        if excess <= 0:
            return now
        for at, spent in self._spent:
            if at + window_s <= now:
                continue
            excess -= spent
            if excess <= 1e-12:
                return at + window_s
        return math.inf  # unreachable but for float drift


class MemoryStateBackend:
    """The embedded default: state shared by the tasks of one process."""

    def __init__(self) -> None:
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
            found = self._windows[key] = MemorySpendWindow()
        return found


@asynccontextmanager
async def open_state_backend(config: StateConfig) -> AsyncIterator[StateBackend]:
    """The state backend ``config`` asks for, for the lifetime of the block.

    Raises ``ConfigError`` for ``backend = "redis"``, which is not available yet.
    """
    kind = StateBackendKind(config.backend)
    if kind is StateBackendKind.REDIS:
        raise ConfigError(
            [
                (
                    "state.backend",
                    'the "redis" state backend is not available yet in this version; '
                    'use backend = "memory" (state is then per process)',
                )
            ]
        )
    await trio.lowlevel.checkpoint()
    yield MemoryStateBackend()
