"""The rate limiter: RPM and TPM rolling windows plus a concurrency cap, on trio.

Waiting is FIFO-fair: a request never overtakes one that queued before it, so a large
token request is not starved by a stream of small ones. Only the head of the queue
watches the clock; the others sleep until they become head.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import attrs
import trio

from atomr_infer_core import RateLimits
from atomr_infer_core.errors import BadRequestError, RateLimitedError

from ._bucket import RollingWindow

__all__ = ["RateLimitPermit", "RateLimiter", "RateLimiterStatistics"]

WINDOW_S = 60.0


@attrs.frozen(kw_only=True)
class RateLimiterStatistics:
    name: str
    in_flight: int
    waiting: int
    granted: int
    rejected: int
    requests_available: float | None
    tokens_available: float | None
    paused_for_s: float
    #: seconds until the request (token) window is back to its full limit
    requests_reset_s: float | None = None
    tokens_reset_s: float | None = None


class RateLimitPermit:
    """One granted request. ``release`` it exactly once when the attempt ends.

    Usable as a (sync) context manager that releases without a usage correction.
    """

    __slots__ = ("_limiter", "_released", "granted_at", "requests", "tokens")

    def __init__(self, limiter: RateLimiter, requests: int, tokens: int, granted_at: float) -> None:
        self._limiter = limiter
        self.requests = requests
        self.tokens = tokens
        self.granted_at = granted_at
        self._released = False

    def release(self, actual_tokens: int | None = None) -> None:
        """Return the concurrency slot; correct TPM with ``actual_tokens`` when known.

        Fewer tokens than reserved are refunded; more are debited. A second call does
        nothing.
        """
        if self._released:
            return
        self._released = True
        self._limiter._release(self, actual_tokens)

    def __enter__(self) -> RateLimitPermit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RateLimitPermit(requests={self.requests}, tokens={self.tokens})"


class RateLimiter:
    """Admission against ``RateLimits`` for one key (a deployment, an API key).

    ``clock`` gives monotonic seconds (trio's clock by default, so MockClock works).
    """

    def __init__(
        self,
        limits: RateLimits,
        *,
        name: str,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.limits = limits
        self.name = name
        self._clock = clock
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        self._rpm = RollingWindow(rpm, WINDOW_S) if rpm is not None else None
        self._tpm = RollingWindow(tpm, WINDOW_S) if tpm is not None else None
        self._max_in_flight = limits.concurrent_requests
        self._in_flight = 0
        self._paused_until = -math.inf
        self._queue: deque[trio.Event] = deque()
        self._changed = trio.Event()
        self._granted = 0
        self._rejected = 0

    # ---- public ---------------------------------------------------------------------

    async def acquire(
        self,
        *,
        requests: int = 1,
        tokens: int = 0,
        deadline: float | None = None,
        wait: bool = True,
    ) -> RateLimitPermit:
        """Wait (FIFO) for a permit for ``requests`` requests and ``tokens`` tokens.

        ``deadline`` is on the limiter's clock. Raises ``RateLimitedError`` (with
        ``retry_after_s`` when it is known) when the permit cannot be had before the
        deadline, or at once with ``wait=False``; ``BadRequestError`` when the request
        can never fit the limits. Cancellation leaves the queue cleanly.
        """
        self._check_fits(requests, tokens)
        if not wait or (not self._queue and self._grantable(requests, tokens)):
            return self.acquire_nowait(requests=requests, tokens=tokens)
        self._reject_if_hopeless(requests, tokens, deadline)
        me = trio.Event()
        self._queue.append(me)
        try:
            if self._queue[0] is not me:
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await me.wait()
                if self._queue[0] is not me:
                    self._reject(requests, tokens, "its deadline passed while queued")
            return await self._wait_as_head(requests, tokens, deadline)
        finally:
            self._leave(me)

    def acquire_nowait(self, *, requests: int = 1, tokens: int = 0) -> RateLimitPermit:
        """A permit now, or ``RateLimitedError`` (never waits, never jumps the queue)."""
        self._check_fits(requests, tokens)
        if self._queue or not self._grantable(requests, tokens):
            self._reject(requests, tokens, "the limit is reached and the caller does not wait")
        return self._grant(requests, tokens)

    def pause_until(self, t: float) -> None:
        """Admit nothing before ``t`` (limiter clock): the upstream answered 429."""
        if t > self._paused_until:
            self._paused_until = t
            self._notify()

    def statistics(self) -> RateLimiterStatistics:
        now = self._clock()
        return RateLimiterStatistics(
            name=self.name,
            in_flight=self._in_flight,
            waiting=len(self._queue),
            granted=self._granted,
            rejected=self._rejected,
            requests_available=None if self._rpm is None else self._rpm.available(now),
            tokens_available=None if self._tpm is None else self._tpm.available(now),
            paused_for_s=max(0.0, self._paused_until - now),
            requests_reset_s=None if self._rpm is None else self._rpm.time_until_full(now),
            tokens_reset_s=None if self._tpm is None else self._tpm.time_until_full(now),
        )

    # ---- internals --------------------------------------------------------------------

    def _check_fits(self, requests: int, tokens: int) -> None:
        if requests < 0 or tokens < 0:
            raise ValueError(f"requests and tokens must be >= 0 (got {requests}, {tokens})")
        if self._tpm is not None and tokens > self._tpm.limit:
            raise BadRequestError(
                f"the request needs {tokens} tokens but {self.name!r} allows "
                f"{int(self._tpm.limit)} tokens per minute; shorten the prompt or lower "
                "max_tokens, or raise rate_limits.tokens_per_minute",
                param="max_tokens",
            )
        if self._rpm is not None and requests > self._rpm.limit:
            raise BadRequestError(
                f"{requests} requests at once exceed {self.name!r}'s "
                f"{int(self._rpm.limit)} requests per minute"
            )

    def _wait_time(self, requests: int, tokens: int, now: float) -> float:
        """Seconds until the windows and the pause allow it (ignores concurrency)."""
        wait = max(0.0, self._paused_until - now)
        if self._rpm is not None and requests:
            wait = max(wait, self._rpm.time_until(requests, now))
        if self._tpm is not None and tokens:
            wait = max(wait, self._tpm.time_until(tokens, now))
        return wait

    def _slot_free(self, requests: int) -> bool:
        return self._max_in_flight is None or requests == 0 or self._in_flight < self._max_in_flight

    def _grantable(self, requests: int, tokens: int) -> bool:
        return self._slot_free(requests) and self._wait_time(requests, tokens, self._clock()) == 0

    def _grant(self, requests: int, tokens: int) -> RateLimitPermit:
        now = self._clock()
        if self._rpm is not None and requests:
            self._rpm.debit(requests, now)
        if self._tpm is not None and tokens:
            self._tpm.debit(tokens, now)
        if requests:
            self._in_flight += 1
        self._granted += 1
        return RateLimitPermit(self, requests, tokens, now)

    def _reject(self, requests: int, tokens: int, why: str) -> None:
        self._rejected += 1
        now = self._clock()
        wait = self._wait_time(requests, tokens, now)
        known = wait if self._slot_free(requests) or wait > 0 else None
        raise RateLimitedError(
            f"rate limit of {self.name!r}: {why}"
            + (f"; capacity frees up in {wait:.3g}s" if known is not None else ""),
            provider=None,
            retry_after_s=known,
        )

    def _reject_if_hopeless(self, requests: int, tokens: int, deadline: float | None) -> None:
        if deadline is None:
            return
        now = self._clock()
        if now + self._wait_time(requests, tokens, now) > deadline:
            self._reject(requests, tokens, "the wait for capacity lies past the deadline")

    async def _wait_as_head(
        self, requests: int, tokens: int, deadline: float | None
    ) -> RateLimitPermit:
        while True:
            now = self._clock()
            wait = self._wait_time(requests, tokens, now)
            if wait == 0 and self._slot_free(requests):
                return self._grant(requests, tokens)
            if deadline is not None and (now + wait > deadline or now >= deadline):
                self._reject(requests, tokens, "the wait for capacity lies past the deadline")
            changed = self._changed
            wake = now + wait if wait > 0 else math.inf
            with trio.move_on_at(min(wake, math.inf if deadline is None else deadline)):
                await changed.wait()

    def _leave(self, me: trio.Event) -> None:
        was_head = bool(self._queue) and self._queue[0] is me
        self._queue.remove(me)
        if was_head and self._queue:
            self._queue[0].set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _release(self, permit: RateLimitPermit, actual_tokens: int | None) -> None:
        now = self._clock()
        if permit.requests:
            self._in_flight -= 1
        if self._tpm is not None and actual_tokens is not None:
            delta = actual_tokens - permit.tokens
            if delta < 0:
                # a spend that already left the window has nothing left to refund
                if now - permit.granted_at < WINDOW_S:
                    self._tpm.give_back(-delta, now)
            elif delta > 0:
                self._tpm.debit(delta, now)
        self._notify()
