"""RateLimiter: exact virtual times on MockClock, FIFO fairness, random schedules."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from atomr_infer_core import RateLimits
from atomr_infer_core.errors import BadRequestError, RateLimitedError
from atomr_infer_remote import RateLimiter, RateLimitPermit


def limiter(**kw: int) -> RateLimiter:
    return RateLimiter(RateLimits(**kw), name="chat")


async def test_third_request_waits_until_the_first_leaves_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(requests_per_minute=2)
    t0 = trio.current_time()
    await lim.acquire()
    await trio.sleep(5)
    await lim.acquire()
    await lim.acquire()
    assert trio.current_time() - t0 == 60.0
    await lim.acquire()
    assert trio.current_time() - t0 == 65.0


async def test_an_early_release_refunds_its_own_tokens_so_no_window_holds_more_than_tpm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A takes 50 at t=0, B 50 at t=30, A releases having used 0 at t=31, C takes 50 at
    # t=32: B and C hold the window until t=90, so D (at t=60.5) waits until then.
    lim = limiter(tokens_per_minute=100)
    t0 = trio.current_time()
    a = await lim.acquire(tokens=50)
    await trio.sleep(30)
    await lim.acquire(tokens=50)  # B
    await trio.sleep(1)
    a.release(actual_tokens=0)
    await trio.sleep(1)
    await lim.acquire(tokens=50)  # C
    await trio.sleep(28.5)
    with pytest.raises(RateLimitedError) as info:
        await lim.acquire(tokens=50, wait=False)  # D at t=60.5
    assert info.value.retry_after == pytest.approx(29.5)
    await lim.acquire(tokens=50)
    assert trio.current_time() - t0 == 90.0


async def test_wait_false_rejects_at_once_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(requests_per_minute=1)
    lim.acquire_nowait()
    await trio.sleep(20)
    with pytest.raises(RateLimitedError) as info:
        await lim.acquire(wait=False)
    assert info.value.retry_after == 40.0
    assert lim.statistics().rejected == 1


async def test_hopeless_deadline_rejects_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(tokens_per_minute=1000)
    t0 = trio.current_time()
    await lim.acquire(tokens=900)
    with pytest.raises(RateLimitedError) as info:
        await lim.acquire(tokens=500, deadline=t0 + 30)
    assert trio.current_time() == t0
    assert info.value.retry_after == 60.0
    permit = await lim.acquire(tokens=500, deadline=t0 + 60)
    assert trio.current_time() == t0 + 60
    assert permit.tokens == 500


async def test_tokens_beyond_tpm_capacity_are_a_bad_request() -> None:
    lim = limiter(tokens_per_minute=1000)
    with pytest.raises(BadRequestError, match="allows 1000 tokens per minute"):
        await lim.acquire(tokens=1001)


async def test_fifo_large_request_is_not_overtaken(autojump_clock: trio.testing.MockClock) -> None:
    lim = limiter(tokens_per_minute=100)
    t0 = trio.current_time()
    order: list[tuple[str, float]] = []
    await lim.acquire(tokens=60)

    async def take(label: str, tokens: int) -> None:
        await lim.acquire(tokens=tokens)
        order.append((label, trio.current_time() - t0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "big", 80)
        await trio.sleep(1)
        nursery.start_soon(take, "small", 10)  # would fit now, but must not jump the queue
    assert order == [("big", 60.0), ("small", 60.0)]


async def test_concurrency_cap_waits_for_release(autojump_clock: trio.testing.MockClock) -> None:
    lim = limiter(concurrent_requests=1)
    t0 = trio.current_time()
    first = await lim.acquire()

    async def finish_later() -> None:
        await trio.sleep(3)
        first.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_later)
        second = await lim.acquire()
    assert trio.current_time() - t0 == 3.0
    assert lim.statistics().in_flight == 1
    with pytest.raises(RateLimitedError) as info:
        await lim.acquire(deadline=trio.current_time() + 2)
    assert trio.current_time() - t0 == 5.0
    assert info.value.retry_after is None
    second.release()
    second.release()  # idempotent
    assert lim.statistics().in_flight == 0


async def test_release_refunds_or_debits_real_usage(autojump_clock: trio.testing.MockClock) -> None:
    lim = limiter(tokens_per_minute=1000)
    t0 = trio.current_time()
    (await lim.acquire(tokens=800)).release(actual_tokens=300)
    assert lim.statistics().tokens_available == 700
    with lim.acquire_nowait(tokens=500) as p:
        assert isinstance(p, RateLimitPermit)
    assert lim.statistics().tokens_available == 200
    (await lim.acquire(tokens=100)).release(actual_tokens=400)
    assert lim.statistics().tokens_available == -200
    await lim.acquire(tokens=100)
    assert trio.current_time() - t0 == 60.0


async def test_pause_until_holds_everyone_and_rejects_past_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(requests_per_minute=100)
    t0 = trio.current_time()
    lim.pause_until(t0 + 7)
    await lim.acquire()
    assert trio.current_time() - t0 == 7.0
    got: list[BaseException] = []

    async def waiter() -> None:
        try:
            await lim.acquire(deadline=t0 + 20)
        except RateLimitedError as exc:
            got.append(exc)

    async with trio.open_nursery() as nursery:
        lim.pause_until(t0 + 10)
        nursery.start_soon(waiter)
        await trio.sleep(1)
        lim.pause_until(t0 + 50)  # the waiter learns at once that it cannot make it
    assert trio.current_time() - t0 == 8.0
    assert len(got) == 1 and got[0].retry_after == 42.0


async def test_cancelled_waiter_leaves_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    lim = limiter(requests_per_minute=1)
    t0 = trio.current_time()
    lim.acquire_nowait()
    async with trio.open_nursery() as nursery:
        with trio.move_on_after(5):
            await lim.acquire()
        assert lim.statistics().waiting == 0
        nursery.start_soon(lim.acquire)
    assert trio.current_time() - t0 == 60.0


async def test_queued_waiter_rejects_once_it_knows_it_cannot_make_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(requests_per_minute=1)
    t0 = trio.current_time()
    lim.acquire_nowait()
    results: list[object] = []

    async def head() -> None:
        results.append(await lim.acquire())

    async def second() -> None:
        try:
            await lim.acquire(deadline=t0 + 90)
        except RateLimitedError as exc:
            results.append(("timeout", trio.current_time() - t0, exc.retry_after))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(head)
        await trio.sleep(0.5)
        nursery.start_soon(second)
    # at 60 s it becomes head and sees its turn comes at 120 s, past its deadline
    assert results[1] == ("timeout", 60.0, 60.0)


async def test_queued_waiter_times_out_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(concurrent_requests=1)
    t0 = trio.current_time()
    held = lim.acquire_nowait()
    outcome: list[float] = []

    async def queued(deadline: float) -> None:
        try:
            await lim.acquire(deadline=deadline)
        except RateLimitedError:
            outcome.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queued, t0 + 50)
        await trio.sleep(1)
        nursery.start_soon(queued, t0 + 30)
    assert outcome == [30.0, 50.0]
    held.release()


@settings(max_examples=40, deadline=None)
@given(
    rpm=st.integers(1, 6),
    cap=st.one_of(st.none(), st.integers(1, 3)),
    arrivals=st.lists(
        st.tuples(st.floats(0, 40), st.floats(0, 30), st.sampled_from([None, 20.0, 90.0])),
        max_size=25,
    ),
)
def test_random_schedules_never_exceed_rpm_in_any_window(
    rpm: int, cap: int | None, arrivals: list[tuple[float, float, float | None]]
) -> None:
    granted: list[float] = []
    rejected: list[tuple[float, float, float | None]] = []
    peak = [0]

    async def main() -> None:
        lim = RateLimiter(RateLimits(requests_per_minute=rpm, concurrent_requests=cap), name="prop")

        async def client(hold: float, patience: float | None) -> None:
            now = trio.current_time()
            deadline = None if patience is None else now + patience
            try:
                permit = await lim.acquire(deadline=deadline)
            except RateLimitedError as exc:
                rejected.append((trio.current_time(), now, deadline))
                assert deadline is not None
                assert trio.current_time() <= deadline
                assert exc.retry_after is None or exc.retry_after >= 0
                return
            granted.append(trio.current_time())
            peak[0] = max(peak[0], lim.statistics().in_flight)
            await trio.sleep(hold)
            permit.release()

        async with trio.open_nursery() as nursery:
            for gap, hold, patience in arrivals:
                await trio.sleep(gap)
                nursery.start_soon(client, hold, patience)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(granted) + len(rejected) == len(arrivals)
    for start in granted:
        assert sum(1 for t in granted if start <= t < start + 60.0) <= rpm
    if cap is not None:
        assert peak[0] <= cap
    assert granted == sorted(granted)
