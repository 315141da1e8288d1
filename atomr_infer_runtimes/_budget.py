"""Spend budgets per deployment over rolling hour and day windows.

Concurrency must not overrun a budget (LiteLLM's check-then-record is not atomic, so
concurrent first requests all pass): before dispatch each request *reserves* its
worst-case cost (estimated input tokens + ``max_tokens`` output, every token uncached)
in one atomic step of the state backend's spend window; afterwards it *settles* to the
real cost from the usage, or *releases* the reservation when it failed without usage.

Actions on a full window: ``reject`` raises BudgetExceededError (with ``retry_after``
when the backend can tell when room frees up); ``warn`` admits, logs and counts once per
window; ``throttle`` admits with the deployment's concurrency halved until the window
has room again.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio

from atomr_infer_core import BudgetAction, Deployment, ExecuteBatch, ModelPrice, TokenUsage
from atomr_infer_core.errors import BudgetExceededError

from ._metrics import ClusterMetrics

__all__ = ["WORST_CASE_OUTPUT_TOKENS", "BudgetGuard", "Reservation"]

log = logging.getLogger("atomr_infer.budget")

#: output tokens assumed for the worst case when a request sets no ``max_tokens``
WORST_CASE_OUTPUT_TOKENS = 4096

HOUR = 3600.0
DAY = 86400.0

# Settling or releasing spend must happen even while the request is being cancelled,
# but must not hang a cancelled request on a dead backend.
_CLEANUP_TIMEOUT = 5.0


@attrs.frozen
class _Window:
    label: str
    limit: float
    seconds: float
    spend: Any  # a SpendWindow of the state backend


class _RollingSum:
    """Spend of this process over a rolling window, in one-minute buckets (for reports).

    Cheap (O(1) amortised): the budget is enforced by the state backend's windows; this
    only tells ``status`` and the metrics what was spent, with minute resolution.
    """

    BUCKET = 60.0

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._buckets: deque[list[float]] = deque()
        self._total = 0.0

    def add(self, amount: float, now: float) -> None:
        start = math.floor(now / self.BUCKET) * self.BUCKET
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([start, amount])
        self._total += amount

    def total(self, now: float) -> float:
        while self._buckets and self._buckets[0][0] + self.BUCKET + self.seconds <= now:
            self._total -= self._buckets.popleft()[1]
        if not self._buckets:
            self._total = 0.0
        return max(0.0, self._total)


@attrs.define(eq=False)
class Reservation:
    """What one request reserved; settle or release it exactly once."""

    amount: float
    windows: tuple[_Window, ...]
    #: when it was reserved (window clock): a release refunds this entry, no other
    at: float = 0.0
    done: bool = False


class BudgetGuard:
    """The budget of one deployment.

    Only windows with a limit live in the state backend (one atomic ``reserve`` per
    window and request); what was spent is also summed locally for ``status`` and
    metrics, so deployments without a budget cost no backend round trips.

    Args:
        deployment: its ``budget`` gives the limits and the action.
        price: the deployment model's price; ``None`` (unpriced) disables accounting.
        state: the cluster's state backend (``window(key)`` gives a SpendWindow).
        clock: the time base of the spend windows.
    """

    def __init__(
        self,
        deployment: Deployment,
        price: ModelPrice | None,
        state: Any,
        metrics: ClusterMetrics,
        clock: Callable[[], float],
        key_prefix: str = "budget",
    ) -> None:
        self.deployment = deployment.name
        self.budget = deployment.budget
        self.price = price
        self._metrics = metrics
        self._clock = clock
        self._warned_at: dict[str, float] = {}
        #: when set, the deployment runs at half concurrency (``throttle``)
        self.throttled = False
        self.on_throttle_change: Callable[[bool], None] | None = None
        self._local = {"hour": _RollingSum(HOUR), "day": _RollingSum(DAY)}
        #: the backend's cost record (``cost-report``), when it keeps one
        self._record_cost = getattr(state, "record_cost", None)
        windows: list[_Window] = []
        if self.budget is not None and price is not None:
            limits = (
                ("hour", self.budget.max_spend_per_hour_usd, HOUR),
                ("day", self.budget.max_spend_per_day_usd, DAY),
            )
            for label, limit, seconds in limits:
                if limit is not None:
                    spend = state.window(f"{key_prefix}:{deployment.name}:{label}")
                    windows.append(_Window(label, limit, seconds, spend))
        self._windows = tuple(windows)
        if self.budget is not None and price is None:
            log.warning(
                "deployment %s has a budget but its model %r has no price in the runtime's "
                "price table; spend cannot be measured and the budget is not enforced",
                deployment.name,
                deployment.model,
            )

    @property
    def enforced(self) -> bool:
        return bool(self._windows)

    @property
    def spend(self) -> dict[str, float]:
        """Spend of this process in the rolling hour and day (minute resolution)."""
        now = self._clock()
        return {label: tally.total(now) for label, tally in self._local.items()}

    def worst_case(self, batch: ExecuteBatch) -> float:
        if self.price is None:
            return 0.0
        out = batch.sampling.max_tokens or WORST_CASE_OUTPUT_TOKENS
        return self.price.worst_case(batch.input_token_estimate(), out * batch.sampling.n)

    def cost(self, usage: TokenUsage) -> float | None:
        return None if self.price is None else self.price.cost(usage)

    async def reserve(self, batch: ExecuteBatch) -> Reservation:
        """Reserve the worst-case cost of ``batch`` in every window, atomically per window.

        Raises BudgetExceededError under ``reject`` when a window has no room; under
        ``warn`` and ``throttle`` the request is admitted and the action taken.
        """
        if self.price is None:
            return Reservation(0.0, ())
        amount = self.worst_case(batch)
        now = self._clock()
        reject = self.budget is not None and self.budget.on_exceeded is BudgetAction.REJECT
        taken: list[_Window] = []
        over: list[_Window] = []
        for window in self._windows:
            spend = window.spend
            if not await spend.reserve(
                amount, limit=window.limit, window_s=window.seconds, now=now
            ):
                if reject:
                    await self._undo(taken, amount, now)
                    raise await self._exceeded(window, amount, now)
                over.append(window)
                await spend.reserve(amount, limit=math.inf, window_s=window.seconds, now=now)
            taken.append(window)
        self._account(amount, now)
        for window in over:
            self._warn_once(window, now)
        if self.budget is not None and self.budget.on_exceeded is BudgetAction.THROTTLE:
            self._set_throttled(bool(over))
        return Reservation(amount, tuple(taken), at=now)

    async def settle(self, reservation: Reservation, usage: TokenUsage | None) -> float | None:
        """Replace the reservation by the real cost of ``usage`` (release when ``None``)."""
        if reservation.done:
            return None
        reservation.done = True
        cost = self.cost(usage) if usage is not None else None
        delta = (cost or 0.0) - reservation.amount
        now = self._clock()
        self._account(delta, now)
        if cost and self._record_cost is not None:
            self._record_cost(self.deployment, now, cost)
        if reservation.windows:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
                for window in reservation.windows:
                    await window.spend.adjust(delta, now=now, reserved_at=reservation.at)
        return cost

    def _account(self, amount: float, now: float) -> None:
        for label, tally in self._local.items():
            tally.add(amount, now)
            self._metrics.of(self.deployment).spend[label].set(tally.total(now))

    async def _undo(self, taken: list[_Window], amount: float, now: float) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            for window in taken:
                await window.spend.adjust(-amount, now=now, reserved_at=now)

    async def _exceeded(self, window: _Window, amount: float, now: float) -> BudgetExceededError:
        return await over_budget(
            window,
            amount,
            now,
            who=f"deployment {self.deployment!r}",
            setting=f"budget.max_spend_per_{window.label}_usd",
        )

    def _warn_once(self, window: _Window, now: float) -> None:
        last = self._warned_at.get(window.label)
        if last is not None and now - last < window.seconds:
            return
        self._warned_at[window.label] = now
        self._metrics.budget_warnings.labels(self.deployment, window.label).inc()
        action = self.budget.on_exceeded.value if self.budget else "warn"
        log.warning(
            "deployment %s is over its $%.6f budget per %s (on_exceeded = %s)",
            self.deployment,
            window.limit,
            window.label,
            action,
        )

    def _set_throttled(self, over: bool) -> None:
        if over == self.throttled:
            return
        self.throttled = over
        log.warning(
            "deployment %s %s",
            self.deployment,
            "is over budget: concurrency halved" if over else "has budget again: full concurrency",
        )
        if self.on_throttle_change is not None:
            self.on_throttle_change(over)

    async def refresh(self) -> None:
        """Re-read the windows: lifts a throttle once every window has room again."""
        now = self._clock()
        over = False
        for window in self._windows:
            over |= await window.spend.total(window_s=window.seconds, now=now) >= window.limit
        if self.budget is not None and self.budget.on_exceeded is BudgetAction.THROTTLE:
            self._set_throttled(over)


async def over_budget(
    window: Any, amount: float, now: float, *, who: str, setting: str
) -> BudgetExceededError:
    """The 429 for ``amount`` not fitting ``window`` (a deployment's or a tenant's: it
    has ``spend``, ``limit``, ``seconds`` and ``label``), with when room comes back."""
    retry_after: float | None = None
    room_at = await window.spend.earliest_room(
        amount, limit=window.limit, window_s=window.seconds, now=now
    )
    if room_at is not None and math.isfinite(room_at):
        retry_after = max(0.0, room_at - now)
    spent = await window.spend.total(window_s=window.seconds, now=now)
    hint = f"; room again in {retry_after:.0f}s" if retry_after is not None else ""
    return BudgetExceededError(
        f"{who} is over its budget: ${spent:.6f} spent of ${window.limit:.6f} per "
        f"{window.label}, and this request may cost up to ${amount:.6f}{hint}. Raise "
        f"{setting} or lower max_tokens",
        retry_after_s=retry_after,
    )
