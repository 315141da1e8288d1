"""The retry decision: a pure function of the attempt, the error and the clock."""

from __future__ import annotations

import random

import attrs

from atomr_infer_core import RetryPolicy
from atomr_infer_core.errors import InferenceError, RateLimitedError

from ._backoff import compute_backoff

__all__ = ["RetryDecision", "RetryEngine"]


@attrs.frozen
class RetryDecision:
    """Retry after ``delay`` seconds, or give up and raise ``error``."""

    retry: bool
    delay: float
    error: InferenceError


class RetryEngine:
    """Decides whether a failed attempt is tried again and after how long.

    Sans-IO: the caller passes the time and sleeps. Randomness for jitter comes from
    ``rng`` (a fresh ``random.Random()`` when not given).
    """

    def __init__(
        self, policy: RetryPolicy, *, idempotent: bool, rng: random.Random | None = None
    ) -> None:
        self.policy = policy
        self.idempotent = idempotent
        self._rng = rng if rng is not None else random.Random()

    def decide(
        self,
        attempt: int,
        error: InferenceError,
        *,
        now: float,
        deadline: float | None,
        output_started: bool,
    ) -> RetryDecision:
        """Decide after attempt ``attempt`` (0 is the first try) failed with ``error``.

        Gives up when output already reached the caller, the deployment is not
        idempotent, ``max_retries`` retries were made, or the error is not retryable.
        The delay is the server's Retry-After when known (and respected), else the
        backoff. A delay that ends past ``deadline`` gives up at once; a rate limit then
        comes back carrying ``retry_after_s`` so the caller can tell its client.
        """
        give_up = RetryDecision(retry=False, delay=0.0, error=error)
        if output_started or not self.idempotent:
            return give_up
        if attempt >= self.policy.max_retries or not error.retryable:
            return give_up
        delay = self._delay(attempt, error)
        if deadline is not None and now + delay > deadline:
            return RetryDecision(retry=False, delay=0.0, error=_past_deadline(error, delay))
        return RetryDecision(retry=True, delay=delay, error=error)

    def _delay(self, attempt: int, error: InferenceError) -> float:
        server = error.retry_after
        if server is not None and self.policy.respect_retry_after:
            return server
        return compute_backoff(self.policy, attempt, self._rng)


def _past_deadline(error: InferenceError, delay: float) -> InferenceError:
    if not isinstance(error, RateLimitedError) or error.retry_after is not None:
        return error
    out = RateLimitedError(
        f"{error.message}; the next try ({delay:g}s away) lies past the request deadline",
        provider=error.provider,
        retry_after_s=delay,
    )
    out.deployment = error.deployment
    return out
