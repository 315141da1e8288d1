"""The Redis state backend on a real redis-server: limits, spend and breakers shared by
several backends (each one a process's view), leases, and an unreachable server.

These tests run on real time (the server's clock decides the windows), with waits kept
well under a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from atomr_infer_core import CircuitBreakerConfig, RateLimits, Secret, StateConfig
from atomr_infer_core.errors import (
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    RateLimitedError,
    StateUnavailableError,
)
from atomr_infer_remote import StateBackend, open_state_backend


def config(url: str, **kw: Any) -> StateConfig:
    return StateConfig(backend="redis", url=Secret(url), **kw)


@asynccontextmanager
async def backends(url: str, n: int = 2, **kw: Any) -> AsyncIterator[list[Any]]:
    """``n`` backends on one server, as ``n`` gateway processes would have."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(open_state_backend(config(url, **kw))) for _ in range(n)
        ]


async def test_the_redis_backend_is_a_state_backend_of_fleet_scope(redis_server) -> None:
    async with backends(redis_server.url, 1) as [state]:
        assert isinstance(state, StateBackend)
        assert state.scope == "fleet"
        limits = RateLimits(requests_per_minute=3)
        assert state.limiter("a", limits) is state.limiter("a", limits)
        assert state.window("w") is state.window("w")
        with pytest.raises(ConfigError, match="already exists"):
            state.limiter("a", RateLimits(requests_per_minute=4))


async def test_approximate_mode_is_refused_with_the_fix(redis_server) -> None:
    with pytest.raises(ConfigError, match=r'state\.mode: only mode = "strict"'):
        async with open_state_backend(config(redis_server.url, mode="approximate")):
            pass


async def test_rpm_holds_across_processes(redis_server) -> None:
    async with backends(redis_server.url, 3) as states:
        limiters = [s.limiter("limits:chat", RateLimits(requests_per_minute=5)) for s in states]
        granted = 0
        refused: list[RateLimitedError] = []

        async def ask(limiter: Any) -> None:
            nonlocal granted
            try:
                permit = await limiter.acquire(wait=False)
            except RateLimitedError as exc:
                refused.append(exc)
                return
            granted += 1
            permit.release()

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(ask, limiters[i % 3])
        assert granted == 5
        assert len(refused) == 25
        assert all(55 < (e.retry_after or 0) <= 60 for e in refused)
        assert "fleet-wide" in refused[0].message


async def test_concurrency_slots_hold_across_processes_and_come_back_on_release(
    redis_server,
) -> None:
    async with backends(redis_server.url) as (a, b):
        limits = RateLimits(concurrent_requests=2)
        la, lb = a.limiter("limits:chat", limits), b.limiter("limits:chat", limits)
        one = await la.acquire(wait=False)
        two = await lb.acquire(wait=False)
        with pytest.raises(RateLimitedError):
            await la.acquire(wait=False)
        waited_for: list[float] = []

        async def waiter() -> None:
            start = trio.current_time()
            permit = await lb.acquire(deadline=trio.current_time() + 5)
            waited_for.append(trio.current_time() - start)
            permit.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.2)
            assert not waited_for
            one.release()  # another process's release frees the slot for b's waiter
        assert 0.2 <= waited_for[0] < 2.0
        two.release()


async def test_slots_of_a_process_that_died_come_back_within_the_lease(redis_server) -> None:
    limits = RateLimits(concurrent_requests=1)
    async with backends(redis_server.url, 1, lease=1.0) as [survivor]:
        async with backends(redis_server.url, 1, lease=1.0) as [doomed]:
            await doomed.limiter("limits:chat", limits).acquire(wait=False)  # never released
            await trio.sleep(1.5)  # it lives: it renews its lease every lease / 3
            with pytest.raises(RateLimitedError):
                await survivor.limiter("limits:chat", limits).acquire(wait=False)
        start = trio.current_time()  # the holder is gone, its lease runs out
        permit = await survivor.limiter("limits:chat", limits).acquire(deadline=start + 5)
        assert trio.current_time() - start <= 1.0 + 0.5  # the lease, plus a loaded machine
        permit.release()


async def test_an_early_release_refunds_its_own_tpm_entry_across_processes(redis_server) -> None:
    async with backends(redis_server.url) as (a, b):
        limits = RateLimits(tokens_per_minute=100)
        la, lb = a.limiter("limits:chat", limits), b.limiter("limits:chat", limits)
        first = await la.acquire(tokens=50, wait=False)  # A
        await trio.sleep(0.05)
        await lb.acquire(tokens=50, wait=False)  # B
        first.release(actual_tokens=10)  # refunds 40 of A's own entry
        await a.settled()  # the release is queued to the backend's worker
        await lb.acquire(tokens=40, wait=False)  # C fits in A's refund
        with pytest.raises(RateLimitedError) as info:
            await la.acquire(tokens=1, wait=False)
        # A's remaining 10 leave first: 1 token fits when A's entry expires
        assert 59.0 < info.value.retry_after <= 60.0
        with pytest.raises(BadRequestError, match="allows 100 tokens per minute"):
            await la.acquire(tokens=101)


async def test_a_429_pause_holds_for_every_process(redis_server) -> None:
    async with backends(redis_server.url) as (a, b):
        limits = RateLimits(requests_per_minute=100)
        a.limiter("limits:chat", limits).pause_until(trio.current_time() + 30)
        await a.settled()
        with pytest.raises(RateLimitedError) as info:
            await b.limiter("limits:chat", limits).acquire(wait=False)
        assert 28 < info.value.retry_after <= 30


async def test_spend_reservations_never_overshoot_across_processes(redis_server) -> None:
    async with backends(redis_server.url, 3) as states:
        windows = [s.window("budget:chat:hour") for s in states]
        now = 1_000_000.0
        wins: list[bool] = []

        async def spend(i: int) -> None:
            wins.append(await windows[i % 3].reserve(1.0, limit=5.0, window_s=3600, now=now))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(spend, i)
        assert wins.count(True) == 5
        assert await windows[0].total(window_s=3600, now=now) == 5.0
        assert await windows[1].earliest_room(1.0, limit=5.0, window_s=3600, now=now) == now + 3600


async def test_a_settle_changes_its_own_reservation_only(redis_server) -> None:
    async with backends(redis_server.url) as (a, b):
        wa, wb = a.window("budget:chat:hour"), b.window("budget:chat:hour")
        assert await wa.reserve(50.0, limit=100.0, window_s=60, now=1000.0)
        assert await wb.reserve(50.0, limit=100.0, window_s=60, now=1030.0)
        await wa.adjust(-50.0, now=1031.0, reserved_at=1000.0)  # A used nothing
        await a.settled()  # refunds are queued: they only ever free room late
        assert await wa.reserve(50.0, limit=100.0, window_s=60, now=1032.0)
        # B (1030) and C (1032) hold the window: no room before B leaves at 1090
        assert not await wb.reserve(50.0, limit=100.0, window_s=60, now=1060.5)
        assert await wb.earliest_room(50.0, limit=100.0, window_s=60, now=1060.5) == 1090.0
        await wb.adjust(+5.0, now=1061.0, reserved_at=1030.0)  # B cost more than reserved
        assert await wa.total(window_s=60, now=1061.0) == 105.0


async def test_a_breaker_opened_in_one_process_is_open_in_the_others(redis_server) -> None:
    async with backends(redis_server.url, 3, sync_interval=0.05) as states:
        cfg = CircuitBreakerConfig(failure_threshold=1, open_duration=30.0)
        breakers = [s.breaker("breaker:chat", cfg, provider="openai") for s in states]
        breakers[0].force_open(30.0)
        await trio.sleep(1.0)  # twenty sync intervals, for a loaded machine
        for breaker in breakers[1:]:
            assert breaker.state == "open"
            with pytest.raises(CircuitOpenError) as info:
                breaker.check()
            assert 27 < info.value.retry_after <= 30  # 30 s less the sync wait


async def test_unreachable_redis_fails_closed_fast_and_recovers(redis_server) -> None:
    async with backends(redis_server.url, 1) as [state]:
        limiter = state.limiter("limits:chat", RateLimits(requests_per_minute=2))
        (await limiter.acquire(wait=False)).release()
        redis_server.stop()
        start = trio.current_time()
        with pytest.raises(StateUnavailableError) as info:
            await limiter.acquire(deadline=start + 10)
        assert trio.current_time() - start < 1.5
        assert info.value.http_status == 503 and info.value.code == "state_unavailable"
        with pytest.raises(StateUnavailableError):
            await state.window("budget:chat:hour").reserve(1.0, limit=5, window_s=60, now=1.0)
        assert state.stats.unavailable >= 2 and not state.stats.available
        redis_server.start()  # empty again (no persistence): the fleet's limits hold anew
        (await limiter.acquire(wait=False)).release()
        (await limiter.acquire(wait=False)).release()
        with pytest.raises(RateLimitedError):
            await limiter.acquire(wait=False)
        assert state.stats.available


async def test_unreachable_redis_fails_open_on_local_limits(redis_server) -> None:
    async with backends(redis_server.url, 1, on_unavailable="fail_open") as [state]:
        limiter = state.limiter("limits:chat", RateLimits(requests_per_minute=2))
        redis_server.stop()
        granted = [await limiter.acquire(wait=False), await limiter.acquire(wait=False)]
        with pytest.raises(RateLimitedError, match="'limits:chat'"):
            await limiter.acquire(wait=False)  # the local limiter holds the same limits
        for permit in granted:
            permit.release()
        assert state.stats.fail_open_grants == 2
        window = state.window("budget:chat:hour")
        assert await window.reserve(4.0, limit=5.0, window_s=60, now=1.0)
        assert not await window.reserve(4.0, limit=5.0, window_s=60, now=1.0)
