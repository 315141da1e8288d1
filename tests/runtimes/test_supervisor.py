"""one_for_one supervision: backoff, restart intensity, escalation, named child states."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from atomr_infer_runtimes import ChildState, RestartPolicy, SupervisedChild, Supervisor

POLICY = RestartPolicy(max_restarts=3, period=60.0, initial_backoff=1.0, max_backoff=8.0)


class Flaky:
    """Starts, then crashes after ``lifetime`` seconds, ``crashes`` times; then stays up."""

    def __init__(self, crashes: int, lifetime: float = 0.0) -> None:
        self.crashes = crashes
        self.lifetime = lifetime
        self.started_at: list[float] = []

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at.append(trio.current_time())
        task_status.started()
        await trio.sleep(self.lifetime)
        if len(self.started_at) <= self.crashes:
            raise RuntimeError(f"crash {len(self.started_at)}")
        await trio.sleep_forever()


def test_backoff_grows_and_is_capped() -> None:
    assert [POLICY.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]


async def test_child_restarts_with_exponential_backoff(autojump_clock: trio.abc.Clock) -> None:
    flaky = Flaky(crashes=3)
    escalated: list[str] = []
    async with trio.open_nursery() as nursery:
        sup = Supervisor("test", nursery, POLICY, on_escalate=lambda c, e: escalated.append(c.name))
        child = await sup.start_child("worker", flaky.run)
        await trio.sleep(100)
        assert child.state is ChildState.RUNNING
        assert child.restarts == 3
        nursery.cancel_scope.cancel()
    # crashes at 0, 1, 3 -> restarts after 1, 2, 4 s of backoff
    assert flaky.started_at == [0.0, 1.0, 3.0, 7.0]
    assert escalated == []
    assert child.state is ChildState.STOPPED


async def test_past_restart_intensity_the_child_fails_and_escalates(
    autojump_clock: trio.abc.Clock,
) -> None:
    flaky = Flaky(crashes=10)
    escalated: list[tuple[str, str]] = []
    crashes: list[str] = []

    def on_crash(child: SupervisedChild, error: BaseException) -> None:
        crashes.append(str(error))

    async with trio.open_nursery() as nursery:
        sup = Supervisor(
            "test", nursery, POLICY, on_escalate=lambda c, e: escalated.append((c.name, str(e)))
        )
        child = await sup.start_child("worker", flaky.run, on_crash=on_crash)
        await trio.sleep(100)
    assert flaky.started_at == [0.0, 1.0, 3.0, 7.0]
    assert crashes == ["crash 1", "crash 2", "crash 3", "crash 4"]
    assert child.state is ChildState.FAILED
    assert escalated == [("worker", "crash 4")]


async def test_restarts_outside_the_period_do_not_count(autojump_clock: trio.abc.Clock) -> None:
    # lives 100 s each time: every crash is alone in its 60 s period, so it never fails
    flaky = Flaky(crashes=6, lifetime=100.0)
    async with trio.open_nursery() as nursery:
        sup = Supervisor("test", nursery, POLICY)
        child = await sup.start_child("worker", flaky.run)
        await trio.sleep(1000)
        assert child.state is ChildState.RUNNING
        assert child.restarts == 6
        nursery.cancel_scope.cancel()
    assert flaky.started_at == [0.0, 101.0, 202.0, 303.0, 404.0, 505.0, 606.0]


async def test_before_restart_runs_after_backoff(autojump_clock: trio.abc.Clock) -> None:
    flaky = Flaky(crashes=1)
    rebuilt_at: list[float] = []

    async def before_restart(child: SupervisedChild) -> None:
        rebuilt_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        sup = Supervisor("test", nursery, POLICY)
        await sup.start_child("worker", flaky.run, before_restart=before_restart)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert rebuilt_at == [1.0]
    assert flaky.started_at == [0.0, 1.0]


async def test_a_child_that_never_starts_fails_after_its_restarts(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def broken(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("no such device")

    async with trio.open_nursery() as nursery:
        sup = Supervisor("test", nursery, POLICY)
        child = await sup.start_child("worker", broken)
        # start_child returns once the child gave up: 1 + 2 + 4 s of backoff
        assert trio.current_time() == 7.0
    assert child.state is ChildState.FAILED
    assert isinstance(child.last_error, OSError)


async def test_duplicate_child_name_is_refused() -> None:
    async with trio.open_nursery() as nursery:
        sup = Supervisor("test", nursery, POLICY)
        await sup.start_child("worker", Flaky(crashes=0).run)
        with pytest.raises(ValueError, match="already running"):
            await sup.start_child("worker", Flaky(crashes=0).run)
        nursery.cancel_scope.cancel()


async def test_a_failing_session_rebuild_counts_as_a_crash(autojump_clock: trio.abc.Clock) -> None:
    flaky = Flaky(crashes=1)
    attempts: list[float] = []

    async def before_restart(child: SupervisedChild) -> None:
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            raise ConnectionError("credential store unreachable")

    async with trio.open_nursery() as nursery:
        sup = Supervisor("test", nursery, POLICY)
        child = await sup.start_child("worker", flaky.run, before_restart=before_restart)
        await trio.sleep(10)
        assert child.state is ChildState.RUNNING
        nursery.cancel_scope.cancel()
    # crash at 0; rebuild at 1 fails; rebuild at 1 + 2 succeeds and the child starts
    assert attempts == [1.0, 3.0]
    assert flaky.started_at == [0.0, 3.0]
    assert child.restarts == 2
