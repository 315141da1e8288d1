"""RetryEngine.decide."""

from __future__ import annotations

import random

import pytest

from atomr_infer_core import JitterKind, RetryPolicy
from atomr_infer_core.errors import (
    BadRequestError,
    ContentFilteredError,
    NetworkError,
    RateLimitedError,
    ServerError,
)
from atomr_infer_remote import RetryDecision, RetryEngine

POLICY = RetryPolicy(max_retries=3, initial_backoff=1.0, max_backoff=60.0, jitter=JitterKind.NONE)


def engine(idempotent: bool = True, **kw: object) -> RetryEngine:
    policy = RetryPolicy(
        **{
            **dict(max_retries=3, initial_backoff=1.0, max_backoff=60.0, jitter=JitterKind.NONE),
            **kw,
        }
    )  # type: ignore[arg-type]
    return RetryEngine(policy, idempotent=idempotent, rng=random.Random(0))


def decide(e: RetryEngine, attempt: int, err: object, **kw: object) -> RetryDecision:
    args: dict[str, object] = {"now": 100.0, "deadline": None, "output_started": False}
    args.update(kw)
    return e.decide(attempt, err, **args)  # type: ignore[arg-type]


def test_rate_limit_retries_until_attempts_are_exhausted() -> None:
    e = engine()
    err = RateLimitedError("429", provider="openai")
    assert [decide(e, a, err).retry for a in range(5)] == [True, True, True, False, False]
    assert [decide(e, a, err).delay for a in range(3)] == [1.0, 2.0, 4.0]


def test_zero_retries_gives_up_at_once() -> None:
    assert not decide(engine(max_retries=0), 0, ServerError("x", status=500)).retry


@pytest.mark.parametrize("err", [ContentFilteredError("no"), BadRequestError("bad")])
def test_non_retryable_errors_give_up(err: Exception) -> None:
    d = decide(engine(), 0, err)
    assert d == RetryDecision(retry=False, delay=0.0, error=err)


def test_non_idempotent_deployment_gives_up() -> None:
    assert not decide(engine(idempotent=False), 0, ServerError("503", status=503)).retry


def test_output_started_gives_up() -> None:
    assert not decide(engine(), 0, NetworkError("reset"), output_started=True).retry


def test_retry_after_wins_over_backoff_and_is_not_capped() -> None:
    e = engine(max_backoff=2.0)
    d = decide(e, 0, RateLimitedError("429", provider="openai", retry_after_s=5.0))
    assert (d.retry, d.delay) == (True, 5.0)


def test_retry_after_ignored_when_not_respected() -> None:
    e = engine(respect_retry_after=False)
    d = decide(e, 1, RateLimitedError("429", provider="openai", retry_after_s=5.0))
    assert d.delay == 2.0


def test_retry_after_past_deadline_gives_up_with_retry_after() -> None:
    err = RateLimitedError("429", provider="openai", retry_after_s=30.0)
    d = decide(engine(), 0, err, now=100.0, deadline=120.0)
    assert not d.retry
    assert d.error is err
    assert d.error.retry_after == 30.0


def test_backoff_past_deadline_puts_the_delay_on_a_rate_limit() -> None:
    err = RateLimitedError("429", provider="openai")
    err.deployment = "chat"
    d = decide(engine(), 2, err, now=100.0, deadline=103.0)
    assert not d.retry
    assert isinstance(d.error, RateLimitedError)
    assert (d.error.retry_after, d.error.provider, d.error.deployment) == (4.0, "openai", "chat")
    assert "past the request deadline" in d.error.message


def test_server_error_past_deadline_gives_up_unchanged() -> None:
    err = ServerError("500", status=500)
    d = decide(engine(), 0, err, now=100.0, deadline=100.5)
    assert (d.retry, d.error) == (False, err)


def test_delay_exactly_at_deadline_is_allowed() -> None:
    d = decide(engine(), 0, ServerError("500", status=500), now=100.0, deadline=101.0)
    assert (d.retry, d.delay) == (True, 1.0)


def test_equal_jitter_uses_the_engine_rng() -> None:
    a = RetryEngine(
        POLICY.__class__(jitter=JitterKind.EQUAL), idempotent=True, rng=random.Random(7)
    )
    b = RetryEngine(
        POLICY.__class__(jitter=JitterKind.EQUAL), idempotent=True, rng=random.Random(7)
    )
    err = NetworkError("reset")
    da = [decide(a, i, err).delay for i in range(3)]
    assert da == [decide(b, i, err).delay for i in range(3)]
    assert all(0.5 * 2**i <= d <= 2**i for i, d in enumerate(da))
