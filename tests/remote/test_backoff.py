"""Backoff and Retry-After parsing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from atomr_infer_core import JitterKind, RetryPolicy
from atomr_infer_remote import compute_backoff, parse_retry_after


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def policy(**kw: object) -> RetryPolicy:
    base: dict[str, object] = {
        "initial_backoff": 0.1,
        "max_backoff": 2.0,
        "backoff_multiplier": 2.0,
        "jitter": JitterKind.NONE,
    }
    base.update(kw)
    return RetryPolicy(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "expected"), [(0, 0.1), (1, 0.2), (2, 0.4), (10, 2.0)])
def test_no_jitter_is_exponential_and_capped(attempt: int, expected: float) -> None:
    assert compute_backoff(policy(), attempt, random.Random(1)) == pytest.approx(expected)


def test_huge_attempt_is_capped_without_overflow() -> None:
    assert compute_backoff(policy(), 100_000, random.Random(1)) == 2.0


@pytest.mark.parametrize(
    ("jitter", "r", "expected"),
    [
        (JitterKind.EQUAL, 0.0, 0.2),
        (JitterKind.EQUAL, 0.5, 0.3),
        (JitterKind.FULL, 0.0, 0.0),
        (JitterKind.FULL, 0.25, 0.1),
    ],
)
def test_jitter_uses_the_injected_random_source(
    jitter: JitterKind, r: float, expected: float
) -> None:
    assert compute_backoff(policy(jitter=jitter), 2, FixedRandom(r)) == pytest.approx(expected)


def test_jitter_is_really_random_across_draws() -> None:
    rng = random.Random(42)
    draws = {compute_backoff(policy(jitter=JitterKind.FULL), 3, rng) for _ in range(20)}
    assert len(draws) == 20


def test_negative_attempt_is_rejected() -> None:
    with pytest.raises(ValueError, match="attempt counts from 0"):
        compute_backoff(policy(), -1, random.Random(0))


@given(
    initial=st.floats(0, 100),
    extra=st.floats(0, 1000),
    multiplier=st.floats(1, 10),
    jitter=st.sampled_from(list(JitterKind)),
    attempt=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_bounds_for_every_policy(
    initial: float, extra: float, multiplier: float, jitter: JitterKind, attempt: int, seed: int
) -> None:
    p = policy(
        initial_backoff=initial,
        max_backoff=initial + extra,
        backoff_multiplier=multiplier,
        jitter=jitter,
    )
    d = compute_backoff(p, attempt, random.Random(seed))
    try:
        capped = min(initial * multiplier**attempt, p.max_backoff)
    except OverflowError:
        capped = p.max_backoff
    low = {JitterKind.NONE: capped, JitterKind.EQUAL: capped / 2, JitterKind.FULL: 0.0}[jitter]
    assert low <= d <= capped <= p.max_backoff


NOW = 1_763_800_000.0  # 2025-11-22T08:26:40Z


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"Retry-After": "  3 "}, 3.0),
        ({"RETRY-AFTER": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "garbage"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({}, None),
        ({"retry-after": "Sat, 22 Nov 2025 08:27:10 GMT"}, 30.0),
        ({"retry-after": "Sat, 22 Nov 2025 08:00:00 GMT"}, 0.0),
        ({"retry-after": "Sat, 22 Nov 2025 08:27:10 -0000"}, 30.0),
        ({"retry-after": "Sat, 99 Nov 2025 08:27:10 GMT"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_parse_retry_after_reads_httpx_headers() -> None:
    import httpx

    assert parse_retry_after(httpx.Headers({"Retry-After": "7"}), NOW) == 7.0
