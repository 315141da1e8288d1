"""Circuit breaker: a sans-IO core (``BreakerCore``) and a thin trio-clock shell.

closed ──failure_threshold counted failures since the last success──▶ open
open ──open_duration elapsed──▶ half_open (at most ``half_open_max_probes`` concurrent probes)
half_open ──a probe succeeds──▶ closed;  ──a probe fails──▶ open with a fresh open_duration

Only errors with ``counts_as_circuit_failure`` (5xx, timeouts, network) count; 429s and
other 4xx release their permit and change nothing. Every result is tied to the permit
that ``check`` gave, so results from before a transition cannot disturb the next state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import attrs
import trio

from atomr_infer_core import CircuitBreakerConfig
from atomr_infer_core.errors import CircuitOpenError, InferenceError

__all__ = ["BreakerCore", "BreakerPermit", "BreakerStatistics", "CircuitBreaker"]

State = Literal["closed", "open", "half_open"]
Transition = Callable[[str, str, str], None]

#: with every probe slot busy, callers are told to come back after this long
_PROBE_WAIT = 1.0


class BreakerPermit:
    """Leave to make one attempt; settle it exactly once (success, failure or release)."""

    __slots__ = ("generation", "probe", "settled")

    def __init__(self, *, probe: bool, generation: int) -> None:
        self.probe = probe
        self.generation = generation
        self.settled = False

    def __repr__(self) -> str:
        return f"BreakerPermit(probe={self.probe}, generation={self.generation})"


@attrs.frozen(kw_only=True)
class BreakerStatistics:
    name: str
    provider: str
    state: State
    consecutive_failures: int
    probes_in_flight: int
    times_opened: int
    rejected: int
    #: Unix timestamps, when open or half-open
    opened_at: float | None
    retry_at: float | None


class BreakerCore:
    """The breaker's state machine. Every method takes the monotonic ``now``."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self.config = config
        self.state: State = "closed"
        self.failures = 0
        self.probes = 0
        self.generation = 0
        self.opened_at: float | None = None
        self.open_until = 0.0
        self.times_opened = 0
        self.rejected = 0
        self._transitions: list[tuple[str, str]] = []

    def advance(self, now: float) -> State:
        """Apply the passage of time (open → half_open) and return the state."""
        if self.state == "open" and now >= self.open_until:
            self._move("half_open")
        return self.state

    def try_acquire(self, now: float) -> BreakerPermit | None:
        """A permit, or ``None`` when the breaker refuses (see :meth:`retry_at`)."""
        state = self.advance(now)
        if state == "closed":
            return BreakerPermit(probe=False, generation=self.generation)
        if state == "half_open" and self.probes < self.config.half_open_max_probes:
            self.probes += 1
            return BreakerPermit(probe=True, generation=self.generation)
        self.rejected += 1
        return None

    def retry_at(self, now: float) -> float:
        """When a refused caller may try again (monotonic)."""
        if self.advance(now) == "open":
            return self.open_until
        return now + min(_PROBE_WAIT, self.config.open_duration)

    def record_success(self, permit: BreakerPermit, now: float) -> None:
        if not self._settle(permit, now):
            return
        if self.state == "closed":
            self.failures = 0
        elif permit.probe and self.state == "half_open":
            self.failures = 0
            self.opened_at = None
            self._move("closed")

    def record_failure(self, permit: BreakerPermit, counts: bool, now: float) -> None:
        """Settle a failed attempt; ``counts`` is the error's ``counts_as_circuit_failure``."""
        if not self._settle(permit, now) or not counts:
            return
        if self.state == "closed":
            self.failures += 1
            if self.failures >= self.config.failure_threshold:
                self._open(now, now + self.config.open_duration)
        elif permit.probe and self.state == "half_open":
            self._open(now, now + self.config.open_duration)

    def release(self, permit: BreakerPermit, now: float) -> None:
        """Settle an attempt that ended without a verdict (cancelled, abandoned)."""
        self._settle(permit, now)

    def force_open(self, duration: float, now: float) -> None:
        """Open now until at least ``now + duration`` (an operator's escape hatch)."""
        if duration < 0:
            raise ValueError(f"force_open duration must be >= 0 (got {duration})")
        until = now + duration
        if self.advance(now) == "open":
            self.open_until = max(self.open_until, until)
        else:
            self._open(now, until)

    def pop_transitions(self) -> list[tuple[str, str]]:
        out, self._transitions = self._transitions, []
        return out

    def _settle(self, permit: BreakerPermit, now: float) -> bool:
        """Mark the permit used; True when its result belongs to the current state."""
        if permit.settled:
            return False
        permit.settled = True
        self.advance(now)
        if permit.generation != self.generation:
            return False
        if permit.probe:
            self.probes -= 1
        return True

    def _open(self, now: float, until: float) -> None:
        self.opened_at = now
        self.open_until = until
        self.times_opened += 1
        self._move("open")

    def _move(self, new: State) -> None:
        old, self.state = self.state, new
        self.generation += 1
        self.probes = 0
        self._transitions.append((old, new))


class CircuitBreaker:
    """One breaker per upstream (provider, endpoint), driven by trio's clock.

    Synchronous and cheap: ``check()`` before each attempt, then exactly one of
    ``record_success``, ``record_failure`` or ``release`` (also on cancellation, in a
    ``finally``). ``on_transition`` callbacks get ``(name, old_state, new_state)``.
    """

    def __init__(
        self,
        config: CircuitBreakerConfig,
        *,
        name: str,
        provider: str = "custom",
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.provider = str(provider)
        self._core = BreakerCore(config)
        self._clock = clock
        self._wall = wall_clock
        self.on_transition: list[Transition] = []

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._core.config

    @property
    def state(self) -> State:
        state = self._core.advance(self._clock())
        self._emit()
        return state

    def check(self) -> BreakerPermit:
        """A permit for one attempt; raises ``CircuitOpenError`` while open."""
        now = self._clock()
        permit = self._core.try_acquire(now)
        self._emit()
        if permit is not None:
            return permit
        retry_at = self._core.retry_at(now)
        wall = self._wall()
        opened = self._core.opened_at if self._core.opened_at is not None else now
        what = "open" if self._core.state == "open" else "half-open with every probe in flight"
        raise CircuitOpenError(
            f"circuit breaker {self.name!r} for {self.provider} is {what}; "
            f"calls fail fast for {retry_at - now:.3g}s more, then a probe is let through",
            provider=self.provider,
            opened_at=wall - (now - opened),
            retry_at=wall + (retry_at - now),
            retry_after_s=max(0.0, retry_at - now),
        )

    def record_success(self, permit: BreakerPermit) -> None:
        self._core.record_success(permit, self._clock())
        self._emit()

    def record_failure(self, permit: BreakerPermit, error: InferenceError) -> None:
        """Settle with ``error``; only circuit-failure errors count against the upstream."""
        self._core.record_failure(permit, error.counts_as_circuit_failure, self._clock())
        self._emit()

    def release(self, permit: BreakerPermit) -> None:
        self._core.release(permit, self._clock())
        self._emit()

    def force_open(self, duration: float) -> None:
        self._core.force_open(duration, self._clock())
        self._emit()

    def statistics(self) -> BreakerStatistics:
        now = self._clock()
        core = self._core
        state = core.advance(now)
        self._emit()
        wall = self._wall()
        opened = None if core.opened_at is None else wall - (now - core.opened_at)
        retry = None if state == "closed" else wall + (core.retry_at(now) - now)
        return BreakerStatistics(
            name=self.name,
            provider=self.provider,
            state=state,
            consecutive_failures=core.failures,
            probes_in_flight=core.probes,
            times_opened=core.times_opened,
            rejected=core.rejected,
            opened_at=opened,
            retry_at=retry,
        )

    def _emit(self) -> None:
        for old, new in self._core.pop_transitions():
            for callback in self.on_transition:
                callback(self.name, old, new)
