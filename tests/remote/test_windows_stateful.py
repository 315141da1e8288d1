"""Stateful tests of the rolling windows: permits release in any order, and no 60 s
window ever holds more than the limit of what the permits really used."""

from __future__ import annotations

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from atomr_infer_remote import RollingWindow, SpendLog

WINDOW = 60.0
LIMIT = 100


class _Windows(RuleBasedStateMachine):
    """Permits take a worst case, then release out of order with what they used: less
    (a refund) or more (a debit at release time, the one overrun a window allows: real
    usage above the estimate). The model charges a released permit what it used, up to
    its reservation, at the time it took the permit; an open permit its reservation."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.open: list[tuple[float, int]] = []  # (taken at, reserved)
        self.charges: list[tuple[float, int]] = []  # (taken at, used up to reserved)

    def take(self, n: int) -> bool:
        raise NotImplementedError

    def release(self, taken_at: float, reserved: int, used: int) -> None:
        raise NotImplementedError

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 7.0, 29.5, 30.0, 59.5, 60.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(n=st.integers(1, 60))
    def acquire(self, n: int) -> None:
        if self.take(n):
            self.open.append((self.now, n))

    @precondition(lambda self: self.open)
    @rule(pick=st.integers(0, 10_000), share=st.floats(0.0, 1.2))
    def settle(self, pick: int, share: float) -> None:
        taken_at, reserved = self.open.pop(pick % len(self.open))
        used = int(reserved * share)
        self.release(taken_at, reserved, used)
        self.charges.append((taken_at, min(used, reserved)))

    @invariant()
    def no_window_holds_more_than_the_limit(self) -> None:
        charged = self.charges + self.open
        for start, _ in charged:
            inside = sum(n for t, n in charged if start <= t < start + WINDOW)
            assert inside <= LIMIT, (start, inside)


class RollingWindowMachine(_Windows):
    def __init__(self) -> None:
        super().__init__()
        self.window = RollingWindow(LIMIT, WINDOW)

    def take(self, n: int) -> bool:
        return self.window.try_take(n, self.now)

    def release(self, taken_at: float, reserved: int, used: int) -> None:
        if used < reserved:
            self.window.give_back(reserved - used, self.now, spent_at=taken_at)
        elif used > reserved:
            self.window.debit(used - reserved, self.now)


class SpendLogMachine(_Windows):
    def __init__(self) -> None:
        super().__init__()
        self.log = SpendLog()

    def take(self, n: int) -> bool:
        return self.log.reserve(float(n), LIMIT, WINDOW, self.now)

    def release(self, taken_at: float, reserved: int, used: int) -> None:
        self.log.adjust(float(used - reserved), self.now, taken_at)


_settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRollingWindow = RollingWindowMachine.TestCase
TestRollingWindow.settings = _settings
TestSpendLog = SpendLogMachine.TestCase
TestSpendLog.settings = _settings
