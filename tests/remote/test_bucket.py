"""Sans-IO capacity counters."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from atomr_infer_remote import RollingWindow, TokenBucket


def test_bucket_starts_full_and_refills_continuously() -> None:
    b = TokenBucket(10, 2.0, now=0.0)
    assert b.try_take(10, 0.0)
    assert not b.try_take(1, 0.0)
    assert b.time_until(3, 0.0) == 1.5
    assert not b.try_take(3, 1.49)
    assert b.try_take(3, 1.5)
    assert b.available(100.0) == 10.0


def test_bucket_never_fits_more_than_capacity() -> None:
    b = TokenBucket(10, 1.0)
    assert b.time_until(11, 0.0) == math.inf
    assert not b.try_take(11, 1e9)


def test_bucket_debit_goes_negative_and_give_back_caps() -> None:
    b = TokenBucket(10, 1.0)
    b.debit(15, 0.0)
    assert b.available(0.0) == -5.0
    assert b.time_until(1, 0.0) == 6.0
    b.give_back(100, 0.0)
    assert b.available(0.0) == 10.0


def test_bucket_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        TokenBucket(0, 1.0)


def test_rolling_window_returns_units_exactly_a_window_later() -> None:
    w = RollingWindow(3, 60.0)
    assert w.try_take(1, 0.0) and w.try_take(2, 10.0)
    assert not w.try_take(1, 59.9)
    assert w.time_until(1, 30.0) == 30.0
    assert w.time_until(3, 30.0) == 40.0
    assert w.try_take(1, 60.0)
    assert w.available(70.0) == 2.0
    assert w.time_until(4, 0.0) == math.inf


def test_rolling_window_give_back_refunds_the_releasing_spend_only() -> None:
    w = RollingWindow(10, 60.0)
    w.try_take(4, 0.0)
    w.try_take(4, 30.0)
    w.give_back(3, 31.0, spent_at=0.0)  # the spend at 0 used only 1 of its 4
    assert w.available(31.0) == 5.0
    assert w.available(60.0) == 6.0  # what is left of the spend at 0 has expired
    assert w.available(90.0) == 10.0  # the spend at 30 stayed whole until its own expiry


def test_rolling_window_give_back_never_takes_more_than_that_spend_holds() -> None:
    w = RollingWindow(10, 60.0)
    w.try_take(2, 0.0)
    w.try_take(5, 10.0)
    w.give_back(9, 11.0, spent_at=0.0)
    assert w.available(11.0) == 5.0
    w.give_back(1, 61.0, spent_at=10.0)  # the spend at 10 is still in the window
    assert w.available(61.0) == 6.0
    w.give_back(4, 71.0, spent_at=10.0)  # ... and now it has left: nothing to refund
    assert w.available(71.0) == 10.0


ops = st.lists(
    st.tuples(
        st.floats(0, 30),
        st.integers(1, 5),
        st.sampled_from(["take", "debit", "refund"]),
        st.integers(0, 1000),
    ),
    max_size=60,
)


@given(ops=ops)
def test_rolling_window_never_admits_more_than_limit_per_window(
    ops: list[tuple[float, int, str, int]],
) -> None:
    w = RollingWindow(7, 60.0)
    now = 0.0
    taken: list[list[float]] = []  # [time, amount] of every spend, as the model sees it
    for dt, n, op, pick in ops:
        now += dt
        if op == "take":
            wait = w.time_until(n, now)
            if w.try_take(n, now):
                assert wait == 0.0
            else:
                assert wait > 0
                assert w.try_take(n, now + wait)
                now += wait
            taken.append([now, n])
        elif op == "refund" and taken:  # any earlier spend gives back part of its own
            entry = taken[pick % len(taken)]
            part = min(n, entry[1])
            w.give_back(part, now, spent_at=entry[0])
            entry[1] -= part
    for start, _ in taken:
        inside = sum(n for t, n in taken if start <= t < start + 60.0)
        assert inside <= 7


@given(
    cap=st.floats(1, 100),
    rate=st.floats(0.01, 100),
    steps=st.lists(st.tuples(st.floats(0, 10), st.floats(0, 100)), max_size=40),
)
def test_bucket_level_stays_within_capacity(
    cap: float, rate: float, steps: list[tuple[float, float]]
) -> None:
    b = TokenBucket(cap, rate)
    now = 0.0
    for dt, n in steps:
        now += dt
        before = b.available(now)
        took = b.try_take(n, now)
        assert took == (n <= before)
        assert 0.0 <= b.available(now) <= cap
        if not took and n <= cap:
            assert b.try_take(n, now + b.time_until(n, now) + 1e-9)
            now += b.time_until(n, now) + 1e-9
