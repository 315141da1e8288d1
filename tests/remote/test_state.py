"""The in-memory state backend and its spend windows."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from atomr_infer_core import CircuitBreakerConfig, RateLimits, StateConfig
from atomr_infer_core.errors import ConfigError
from atomr_infer_remote import (
    MemorySpendWindow,
    MemoryStateBackend,
    SpendWindow,
    StateBackend,
    open_state_backend,
)


async def test_same_key_gives_the_same_object() -> None:
    async with open_state_backend(StateConfig()) as state:
        assert isinstance(state, StateBackend)
        limits = RateLimits(requests_per_minute=10)
        assert state.limiter("a", limits) is state.limiter("a", limits)
        assert state.limiter("a", limits) is not state.limiter("b", limits)
        cfg = CircuitBreakerConfig()
        breaker = state.breaker("openai:chat", cfg, provider="openai")
        assert breaker is state.breaker("openai:chat", cfg)
        assert breaker.provider == "openai"
        assert state.window("w") is state.window("w")
        assert isinstance(state.window("w"), SpendWindow)


def test_same_key_with_other_limits_is_a_config_error() -> None:
    state = MemoryStateBackend()
    state.limiter("a", RateLimits(requests_per_minute=10))
    with pytest.raises(ConfigError, match="already exists"):
        state.limiter("a", RateLimits(requests_per_minute=11))
    state.breaker("b", CircuitBreakerConfig())
    with pytest.raises(ConfigError, match="already exists"):
        state.breaker("b", CircuitBreakerConfig(failure_threshold=1))


async def test_the_memory_backend_is_per_process() -> None:
    async with open_state_backend(StateConfig()) as state:
        assert state.scope == "process"


async def test_reserve_is_check_and_add_over_a_rolling_window() -> None:
    w = MemorySpendWindow()
    assert await w.reserve(6.0, limit=10.0, window_s=3600, now=0.0)
    assert not await w.reserve(5.0, limit=10.0, window_s=3600, now=100.0)
    assert await w.reserve(4.0, limit=10.0, window_s=3600, now=100.0)
    assert await w.total(window_s=3600, now=3599.0) == 10.0
    assert await w.total(window_s=3600, now=3600.0) == 4.0
    assert await w.reserve(5.0, limit=10.0, window_s=3600, now=3600.0)


async def test_adjust_settles_real_cost_and_releases() -> None:
    w = MemorySpendWindow()
    await w.reserve(2.0, limit=10.0, window_s=60, now=0.0)
    await w.adjust(+0.5, now=1.0, reserved_at=0.0)  # real cost 2.5
    assert await w.total(window_s=60, now=1.0) == 2.5
    await w.reserve(3.0, limit=10.0, window_s=60, now=2.0)
    await w.adjust(-3.0, now=3.0, reserved_at=2.0)  # it failed: release its reservation
    assert await w.total(window_s=60, now=3.0) == 2.5
    assert await w.total(window_s=60, now=60.5) == 0.5
    assert await w.total(window_s=60, now=61.0) == 0.0


async def test_a_release_refunds_its_own_reservation_not_the_newest() -> None:
    # the budget shape of the TPM overrun: A reserves at 0, B at 30, A is released at 31
    w = MemorySpendWindow()
    assert await w.reserve(50.0, limit=100.0, window_s=60, now=0.0)
    assert await w.reserve(50.0, limit=100.0, window_s=60, now=30.0)
    await w.adjust(-50.0, now=31.0, reserved_at=0.0)
    assert await w.reserve(50.0, limit=100.0, window_s=60, now=32.0)
    # B (30) and C (32) are both still in every window ending before t=90
    assert not await w.reserve(50.0, limit=100.0, window_s=60, now=60.5)
    assert await w.earliest_room(50.0, limit=100.0, window_s=60, now=60.5) == 90.0


async def test_earliest_room() -> None:
    w = MemorySpendWindow()
    await w.reserve(4.0, limit=10.0, window_s=100, now=0.0)
    await w.reserve(5.0, limit=10.0, window_s=100, now=30.0)
    assert await w.earliest_room(1.0, limit=10.0, window_s=100, now=50.0) == 50.0
    assert await w.earliest_room(3.0, limit=10.0, window_s=100, now=50.0) == 100.0
    assert await w.earliest_room(7.0, limit=10.0, window_s=100, now=50.0) == 130.0
    assert await w.earliest_room(11.0, limit=10.0, window_s=100, now=50.0) is None


async def test_windows_of_different_lengths_share_one_log() -> None:
    w = MemorySpendWindow()
    await w.reserve(1.0, limit=100.0, window_s=86400, now=0.0)
    await w.reserve(1.0, limit=100.0, window_s=3600, now=4000.0)
    assert await w.total(window_s=3600, now=4000.0) == 1.0
    assert await w.total(window_s=86400, now=4000.0) == 2.0


async def test_concurrent_reservations_never_overshoot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    w = MemorySpendWindow()
    wins: list[bool] = []

    async def spend() -> None:
        wins.append(await w.reserve(1.0, limit=5.0, window_s=60, now=trio.current_time()))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(spend)
    assert wins.count(True) == 5
