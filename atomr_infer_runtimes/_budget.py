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


@attrs.define(eq=False)
class Reservation:
    """What one request reserved; settle or release it exactly once."""

    amount: float
    windows: tuple[_Window, ...]
    done: bool = False


class BudgetGuard:
    """The budget of one deployment.

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
        self.spend: dict[str, float] = {"hour": 0.0, "day": 0.0}
        windows: list[_Window] = []
        limits = (
            ("hour", self.budget.max_spend_per_hour_usd if self.budget else None, HOUR),
            ("day", self.budget.max_spend_per_day_usd if self.budget else None, DAY),
        )
        for label, limit, seconds in limits:
            spend = state.window(f"{key_prefix}:{deployment.name}:{label}")
            windows.append(_Window(label, math.inf if limit is None else limit, seconds, spend))
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
        return self.budget is not None and self.price is not None

    def worst_case(self, batch: ExecuteBatch) -> float:
        if self.price is None:
            return 0.0
        out = batch.sampling.max_tokens or WORST_CASE_OUTPUT_TOKENS
        return self.price.worst_case(batch.input_token_estimate(), out * batch.sampling.n)

    def cost(self, usage: TokenUsage) -> float | None:
        return None if self.price is None else self.price.cost(usage)

    async def reserve(self, batch: ExecuteBatch) -> Reservation:
        """Reserve the worst-case cost of ``batch`` in every window, atomically per window.

        Raises BudgetExceededError under ``reject`` when a window has no room.
        """
        amount = self.worst_case(batch)
        if self.price is None:
            return Reservation(0.0, ())
        action = self.budget.on_exceeded if self.budget else BudgetAction.WARN
        now = self._clock()
        taken: list[_Window] = []
        for window in self._windows:
            limit = window.limit if action is BudgetAction.REJECT else math.inf
            ok = await window.spend.reserve(amount, limit=limit, window_s=window.seconds, now=now)
            if not ok:
                await self._undo(taken, amount, now)
                raise await self._exceeded(window, amount, now)
            taken.append(window)
        await self._observe(now)
        return Reservation(amount, tuple(taken))

    async def settle(self, reservation: Reservation, usage: TokenUsage | None) -> float | None:
        """Replace the reservation by the real cost of ``usage`` (release when ``None``)."""
        if reservation.done:
            return None
        reservation.done = True
        cost = self.cost(usage) if usage is not None else None
        delta = (cost or 0.0) - reservation.amount
        if not reservation.windows:
            return cost
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            now = self._clock()
            for window in reservation.windows:
                await window.spend.adjust(delta, now=now)
            await self._observe(now)
        return cost

    async def _undo(self, taken: list[_Window], amount: float, now: float) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            for window in taken:
                await window.spend.adjust(-amount, now=now)

    async def _exceeded(self, window: _Window, amount: float, now: float) -> BudgetExceededError:
        retry_after: float | None = None
        room_at = await window.spend.earliest_room(
            amount, limit=window.limit, window_s=window.seconds, now=now
        )
        if room_at is not None and math.isfinite(room_at):
            retry_after = max(0.0, room_at - now)
        spent = await window.spend.total(window_s=window.seconds, now=now)
        hint = f"; room again in {retry_after:.0f}s" if retry_after is not None else ""
        return BudgetExceededError(
            f"deployment {self.deployment!r} is over its budget: ${spent:.6f} spent of "
            f"${window.limit:.6f} per {window.label}, and this request may cost up to "
            f"${amount:.6f}{hint}. Raise budget.max_spend_per_{window.label}_usd or lower "
            "max_tokens",
            retry_after_s=retry_after,
        )

    async def _observe(self, now: float) -> None:
        """Refresh cached totals; warn once per window, throttle while over."""
        over = False
        for window in self._windows:
            total = await window.spend.total(window_s=window.seconds, now=now)
            self.spend[window.label] = total
            self._metrics.spend.labels(self.deployment, window.label).set(total)
            if total > window.limit:
                over = True
                self._warn_once(window, total, now)
        if self.budget is not None and self.budget.on_exceeded is BudgetAction.THROTTLE:
            self._set_throttled(over)

    def _warn_once(self, window: _Window, total: float, now: float) -> None:
        last = self._warned_at.get(window.label)
        if last is not None and now - last < window.seconds:
            return
        self._warned_at[window.label] = now
        self._metrics.budget_warnings.labels(self.deployment, window.label).inc()
        action = self.budget.on_exceeded.value if self.budget else "warn"
        log.warning(
            "deployment %s spent $%.6f of its $%.6f budget per %s (on_exceeded = %s)",
            self.deployment,
            total,
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
        """Re-read the windows (lifts a throttle once the window rolled)."""
        if self.price is not None:
            await self._observe(self._clock())
