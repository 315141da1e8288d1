"""Circuit breaker: the sans-IO core (tables, a stateful hypothesis machine) and the shell."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from atomr_infer_core import CircuitBreakerConfig
from atomr_infer_core.errors import (
    CircuitOpenError,
    NetworkError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
)
from atomr_infer_remote import BreakerCore, BreakerPermit, CircuitBreaker


def cfg(threshold: int = 2, open_s: float = 30.0, probes: int = 1) -> CircuitBreakerConfig:
    return CircuitBreakerConfig(
        failure_threshold=threshold, open_duration=open_s, half_open_max_probes=probes
    )


def fail(core: BreakerCore, now: float, counts: bool = True) -> None:
    permit = core.try_acquire(now)
    assert permit is not None
    core.record_failure(permit, counts, now)


def test_threshold_counted_failures_open_the_breaker() -> None:
    core = BreakerCore(cfg(threshold=2))
    fail(core, 0.0)
    assert core.state == "closed"
    fail(core, 1.0)
    assert core.state == "open"
    assert core.try_acquire(2.0) is None
    assert core.retry_at(2.0) == 31.0


def test_success_resets_the_failure_count() -> None:
    core = BreakerCore(cfg(threshold=2))
    fail(core, 0.0)
    ok = core.try_acquire(0.5)
    assert ok is not None
    core.record_success(ok, 0.5)
    fail(core, 1.0)
    assert core.state == "closed"


def test_non_counting_errors_neither_add_nor_reset() -> None:
    core = BreakerCore(cfg(threshold=2))
    fail(core, 0.0)
    fail(core, 0.1, counts=False)
    assert core.failures == 1
    fail(core, 0.2)
    assert core.state == "open"


def test_half_open_after_open_duration_then_successful_probe_closes() -> None:
    core = BreakerCore(cfg(threshold=1, open_s=10.0))
    fail(core, 0.0)
    assert core.advance(9.999) == "open"
    assert core.advance(10.0) == "half_open"
    probe = core.try_acquire(10.0)
    assert probe is not None and probe.probe
    core.record_success(probe, 10.5)
    assert core.state == "closed"
    assert core.pop_transitions() == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_failed_probe_reopens_with_a_fresh_open_duration() -> None:
    core = BreakerCore(cfg(threshold=1, open_s=10.0))
    fail(core, 0.0)
    probe = core.try_acquire(12.0)
    assert probe is not None
    core.record_failure(probe, True, 13.0)
    assert core.state == "open"
    assert core.retry_at(13.0) == 23.0
    assert core.advance(22.9) == "open"
    assert core.advance(23.0) == "half_open"


def test_half_open_admits_at_most_max_probes() -> None:
    core = BreakerCore(cfg(threshold=1, open_s=1.0, probes=2))
    fail(core, 0.0)
    a, b = core.try_acquire(1.0), core.try_acquire(1.0)
    assert a is not None and b is not None
    assert core.try_acquire(1.0) is None
    core.release(a, 1.1)  # cancelled probe frees its slot without a verdict
    assert core.state == "half_open"
    c = core.try_acquire(1.2)
    assert c is not None and c.probe


def test_non_counting_probe_failure_only_releases() -> None:
    core = BreakerCore(cfg(threshold=1, open_s=1.0))
    fail(core, 0.0)
    probe = core.try_acquire(1.0)
    assert probe is not None
    core.record_failure(probe, False, 1.0)
    assert core.state == "half_open"
    assert core.try_acquire(1.0) is not None


def test_results_from_before_a_transition_are_ignored() -> None:
    core = BreakerCore(cfg(threshold=1, open_s=1.0))
    old = core.try_acquire(0.0)
    assert old is not None
    fail(core, 0.0)
    probe = core.try_acquire(1.0)
    core.record_success(old, 1.0)  # a late success from the closed era proves nothing
    assert core.state == "half_open"
    assert probe is not None
    core.record_success(probe, 1.0)
    assert core.state == "closed"


def test_a_permit_settles_once() -> None:
    core = BreakerCore(cfg(threshold=1, open_s=1.0, probes=1))
    fail(core, 0.0)
    probe = core.try_acquire(1.0)
    assert probe is not None
    core.release(probe, 1.0)
    core.release(probe, 1.0)
    assert core.probes == 0


def test_force_open_extends_but_never_shortens() -> None:
    core = BreakerCore(cfg(threshold=1, open_s=30.0))
    core.force_open(5.0, 0.0)
    assert (core.state, core.retry_at(0.0)) == ("open", 5.0)
    core.force_open(1.0, 1.0)
    assert core.retry_at(1.0) == 5.0
    core.force_open(60.0, 2.0)
    assert core.retry_at(2.0) == 62.0
    with pytest.raises(ValueError, match=">= 0"):
        core.force_open(-1.0, 3.0)


class BreakerMachine(RuleBasedStateMachine):
    """Random operation sequences on a fake clock; invariants hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.config = cfg(threshold=3, open_s=5.0, probes=2)
        self.core = BreakerCore(self.config)
        self.now = 0.0
        self.outstanding: list[BreakerPermit] = []
        self.last_success_at: float | None = None

    @rule(dt=st.floats(0, 7))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def check(self) -> None:
        was_open = self.core.advance(self.now) == "open"
        permit = self.core.try_acquire(self.now)
        if was_open:
            assert permit is None
        if permit is not None:
            self.outstanding.append(permit)

    @rule(data=st.data(), outcome=st.sampled_from(["success", "fail", "fail_4xx", "release"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        if not self.outstanding:
            return
        permit = self.outstanding.pop(data.draw(st.integers(0, len(self.outstanding) - 1)))
        probe_now = permit.probe and permit.generation == self.core.generation
        if outcome == "success":
            self.core.record_success(permit, self.now)
            if probe_now:
                assert self.core.state == "closed"
        elif outcome == "release":
            self.core.release(permit, self.now)
        else:
            self.core.record_failure(permit, outcome == "fail", self.now)
            if probe_now and outcome == "fail":
                assert self.core.state == "open"
                assert self.core.open_until == self.now + self.config.open_duration

    @rule(d=st.floats(0, 20))
    def force(self, d: float) -> None:
        self.core.force_open(d, self.now)
        assert self.core.state == "open" or d == 0

    @invariant()
    def probes_are_bounded(self) -> None:
        live = [p for p in self.outstanding if p.probe and p.generation == self.core.generation]
        assert self.core.probes == len(live)
        assert self.core.probes <= self.config.half_open_max_probes

    @invariant()
    def closed_means_below_threshold(self) -> None:
        if self.core.state == "closed":
            assert self.core.failures < self.config.failure_threshold
        else:
            assert self.core.opened_at is not None


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# ---- the trio shell ----------------------------------------------------------------


def shell(
    clock_start: float = 0.0, **kw: object
) -> tuple[CircuitBreaker, list[tuple[str, str, str]]]:
    breaker = CircuitBreaker(
        cfg(**kw),  # type: ignore[arg-type]
        name="openai:chat",
        provider="openai",
        wall_clock=lambda: 1_000_000.0 + trio.current_time(),
    )
    seen: list[tuple[str, str, str]] = []
    breaker.on_transition.append(lambda *t: seen.append(t))
    return breaker, seen


async def test_open_breaker_raises_with_truthful_timestamps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker, seen = shell(threshold=2, open_s=30.0)
    start = trio.current_time()
    for _ in range(2):
        breaker.record_failure(breaker.check(), ServerError("503", status=503))
        await trio.sleep(1.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.check()
    err = info.value
    assert err.opened_at == pytest.approx(1_000_000.0 + start + 1.0)
    assert err.retry_at == pytest.approx(1_000_000.0 + start + 31.0)
    assert err.retry_after == pytest.approx(29.0)
    assert err.provider == "openai"
    assert seen == [("openai:chat", "closed", "open")]


async def test_probe_cycle_on_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    breaker, seen = shell(threshold=1, open_s=10.0)
    breaker.record_failure(breaker.check(), RequestTimeoutError("slow", phase="read"))
    await trio.sleep(10.0)
    assert breaker.state == "half_open"
    probe = breaker.check()
    with pytest.raises(CircuitOpenError) as info:
        breaker.check()
    assert info.value.retry_after == pytest.approx(1.0)
    breaker.record_failure(probe, NetworkError("reset"))
    assert breaker.state == "open"
    await trio.sleep(10.0)
    breaker.record_success(breaker.check())
    assert breaker.state == "closed"
    assert [t[1:] for t in seen] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_rate_limits_do_not_count(autojump_clock: trio.testing.MockClock) -> None:
    breaker, _ = shell(threshold=1)
    for _ in range(5):
        breaker.record_failure(breaker.check(), RateLimitedError("429", provider="openai"))
    assert breaker.state == "closed"


async def test_force_open_and_statistics(autojump_clock: trio.testing.MockClock) -> None:
    breaker, _ = shell(threshold=5, open_s=30.0)
    t0 = trio.current_time()
    breaker.force_open(120.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.check()
    assert info.value.retry_at == pytest.approx(1_000_000.0 + t0 + 120.0)
    stats = breaker.statistics()
    assert (stats.state, stats.rejected, stats.times_opened) == ("open", 1, 1)
    assert stats.opened_at == pytest.approx(1_000_000.0 + t0)
    await trio.sleep(120.0)
    assert breaker.statistics().state == "half_open"
