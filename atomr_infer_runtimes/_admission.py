"""Admission of one request to one deployment: budget ▸ rate limit ▸ capacity.

- budget: reserve the worst-case cost (see ``_budget``);
- rate limit: the first attempt's permit from the deployment's ``RateLimiter``
  (one request plus the estimated tokens; the remote engine takes one per retry);
- capacity: one of the deployment's ``serving.max_concurrent`` slots, shared by all its
  replicas (none while no replica serves; halved while a ``throttle`` budget is exceeded);
  with a shared state backend also one of ``max_concurrent`` leased slots of the whole
  fleet, so the cap holds across processes too. When none is free, ``on_capacity_exhausted`` says:
  ``reject`` fails now, ``queue`` waits (at most ``serving.max_queued`` waiters) until
  the request's deadline, ``fallback`` fails with CapacityExhaustedError so the cluster
  moves to the next deployment. Waiters of several tenants (``batch.tenant``) share freed
  slots in proportion to their tenant's ``weight`` (weighted fair queueing, see
  ``atomr_infer_remote.FairQueue``); within a tenant, priority then FIFO. Requests
  without a tenant form one default tenant of weight 1.

Waits run in the caller's task under the request's deadline scope: cancelling the
request removes it from every queue at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import trio

from atomr_infer_core import CapacityPolicy, Deployment, ExecuteBatch, Priority, TokenUsage
from atomr_infer_core.errors import CapacityExhaustedError, RateLimitedError
from atomr_infer_remote import FairQueue

from ._budget import BudgetGuard, Reservation
from ._metrics import ClusterMetrics

__all__ = ["Admission", "CapacityGate", "Ticket"]


@attrs.define(eq=False)
class _Waiter:
    event: trio.Event = attrs.Factory(trio.Event)
    granted: bool = False
    tenant: Hashable = None


class CapacityGate:
    """Counting slots with a bounded waiting line, fair between tenants.

    The line is the remote layer's ``FairQueue`` (weighted fair between tenants;
    priority, then FIFO within one). A released slot is handed straight to the waiter
    the line picks, so a newcomer cannot overtake it. Not thread-safe (one trio run).
    """

    def __init__(self, limit: int, max_queued: int) -> None:
        self._limit = limit
        self.in_use = 0
        self.max_queued = max_queued
        self._line: FairQueue[_Waiter] = FairQueue()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def queued(self) -> int:
        return len(self._line)

    def set_limit(self, limit: int) -> None:
        """Change the number of slots (replicas came or went, throttle); wakes waiters."""
        self._limit = max(0, limit)
        self._grant()

    def try_acquire(self) -> bool:
        if self.in_use < self._limit and not self._line:
            self.in_use += 1
            return True
        return False

    async def acquire(
        self, priority: Priority, *, tenant: Hashable = None, weight: float = 1.0
    ) -> None:
        """Wait for a slot in line. Raises CapacityExhaustedError when the line is full."""
        if self.try_acquire():
            await trio.lowlevel.checkpoint()
            return
        if len(self._line) >= self.max_queued:
            raise CapacityExhaustedError(
                f"the request queue is full ({self.max_queued} waiting); retry shortly or "
                "raise serving.max_queued"
            )
        waiter = _Waiter()
        waiter.tenant = tenant
        self._line.push(waiter, tenant=tenant, weight=weight, priority=priority)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()
            else:
                self._line.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._grant()

    def _grant(self) -> None:
        while self._line and self.in_use < self._limit:
            waiter = self._line.pop()
            waiter.granted = True
            self.in_use += 1
            waiter.event.set()


@attrs.define(eq=False)
class Ticket:
    """What admission handed out for one attempt; :meth:`Admission.release` returns it."""

    reservation: Reservation | None = None
    permit: Any = None
    slot: bool = False
    #: the fleet-wide capacity slot (shared state backends only)
    fleet_slot: Any = None


class Admission:
    """Admission control of one deployment."""

    def __init__(
        self,
        deployment: Deployment,
        *,
        budget: BudgetGuard,
        limiter: Any,
        metrics: ClusterMetrics,
        serving_replicas: Callable[[], int],
        fleet_capacity: Any = None,
        weight_of: Callable[[str | None], float] | None = None,
    ) -> None:
        self.deployment = deployment
        self.budget = budget
        self.limiter = limiter
        #: with a shared state backend: ``max_concurrent`` slots for the whole fleet
        self.fleet_capacity = fleet_capacity
        self._metrics = metrics
        self._serving_replicas = serving_replicas
        #: a tenant's share of this deployment's queue (the cluster's tenants set it)
        self.weight_of: Callable[[str | None], float] = weight_of or _equal_weight
        self.capacity = CapacityGate(0, deployment.serving.max_queued)
        budget.on_throttle_change = lambda _over: self.refresh_capacity()

    def refresh_capacity(self) -> None:
        """Recompute the slot count from serving replicas and the throttle.

        ``max_concurrent`` holds for the deployment as a whole: replicas share it (the
        router spreads the slots over them by least outstanding)."""
        slots = self.deployment.serving.max_concurrent if self._serving_replicas() else 0
        if self.budget.throttled and slots > 0:
            slots = max(1, slots // 2)
        self.capacity.set_limit(slots)
        self._metrics.of(self.deployment.name).queue_depth.set(self.capacity.queued)

    async def admit(
        self, batch: ExecuteBatch, *, deadline: float, on_phase: Callable[[str], None]
    ) -> Ticket:
        """Budget, then rate limit, then capacity. The caller's scope enforces ``deadline``.

        Raises BudgetExceededError, RateLimitedError, CapacityExhaustedError; on any
        error, what was taken is given back before raising.
        """
        ticket = Ticket()
        try:
            on_phase("budget")
            ticket.reservation = await self.budget.reserve(batch)
            on_phase("rate_limit")
            ticket.permit = await self._permit(batch, deadline)
            on_phase("queue")
            await self._slot(batch)
            ticket.slot = True
            ticket.fleet_slot = await self._fleet_slot(deadline)
        except BaseException:
            await self.release(ticket, None)
            raise
        return ticket

    async def _permit(self, batch: ExecuteBatch, deadline: float) -> Any:
        if self.limiter is None:
            return None
        started = trio.current_time()
        permit = await self.limiter.acquire(
            requests=1,
            tokens=batch.estimated_total_tokens(),
            deadline=deadline if math.isfinite(deadline) else None,
            wait=self.deployment.serving.on_capacity_exhausted is CapacityPolicy.QUEUE,
        )
        waited = trio.current_time() - started
        if waited > 0:
            self._metrics.of(self.deployment.name).limiter_wait.observe(waited)
        return permit

    async def _slot(self, batch: ExecuteBatch) -> None:
        gate = self.capacity
        if gate.try_acquire():
            return
        policy = self.deployment.serving.on_capacity_exhausted
        if policy is not CapacityPolicy.QUEUE:
            raise CapacityExhaustedError(
                f"deployment {self.deployment.name!r} is at capacity ({gate.in_use} of "
                f"{gate.limit} slots busy; on_capacity_exhausted = {policy.value})",
                retry_after_s=1.0,
            )
        bound = self._metrics.of(self.deployment.name)
        started = trio.current_time()
        bound.queue_depth.set(gate.queued + 1)
        try:
            await gate.acquire(
                batch.priority, tenant=batch.tenant, weight=self.weight_of(batch.tenant)
            )
        finally:
            bound.queue_depth.set(gate.queued)
        bound.queue_wait.observe(trio.current_time() - started)

    async def _fleet_slot(self, deadline: float) -> Any:
        if self.fleet_capacity is None:
            return None
        policy = self.deployment.serving.on_capacity_exhausted
        try:
            return await self.fleet_capacity.acquire(
                requests=1,
                deadline=deadline if math.isfinite(deadline) else None,
                wait=policy is CapacityPolicy.QUEUE,
            )
        except RateLimitedError as exc:
            raise CapacityExhaustedError(
                f"deployment {self.deployment.name!r} is at capacity across the fleet "
                f"({self.deployment.serving.max_concurrent} in flight over every process; "
                f"on_capacity_exhausted = {policy.value})",
                retry_after_s=exc.retry_after if exc.retry_after is not None else 1.0,
            ) from None

    async def release(self, ticket: Ticket, usage: TokenUsage | None) -> float | None:
        """Give back the slot and the permit; settle (or release) the budget."""
        if ticket.fleet_slot is not None:
            fleet_slot, ticket.fleet_slot = ticket.fleet_slot, None
            fleet_slot.release()
        if ticket.slot:
            ticket.slot = False
            self.capacity.release()
            self._metrics.of(self.deployment.name).queue_depth.set(self.capacity.queued)
        if ticket.permit is not None:
            permit, ticket.permit = ticket.permit, None
            _release_permit(self.limiter, permit, usage)
        if ticket.reservation is not None:
            reservation, ticket.reservation = ticket.reservation, None
            return await self.budget.settle(reservation, usage)
        return None


def _equal_weight(_tenant: str | None) -> float:
    return 1.0


def _release_permit(limiter: Any, permit: Any, usage: TokenUsage | None) -> None:
    permit.release(actual_tokens=None if usage is None else usage.total_tokens)
