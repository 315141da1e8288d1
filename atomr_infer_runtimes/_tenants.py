"""Tenants (``[[key]]``): who may use which model, at what rate, for how much.

Once per request, before any deployment is tried, :meth:`Tenants.admit` checks the
request's tenant (``batch.tenant``, set by the gateway from the key it sent):

1. model: the tenant's ``models`` (empty: all) name the deployment or pipeline asked
   for, else ``ModelNotAllowedError`` (403);
2. budget: the worst-case cost (estimated input + ``max_tokens`` output at the price of
   the deployment the model routes to) is reserved in the tenant's hour and day spend
   windows of the state backend; ``reject`` → ``BudgetExceededError`` (429),
   ``warn`` → admitted and logged once per window, ``throttle`` → admitted with the
   tenant's queue weight halved while over;
3. rate limits: one permit of the tenant's own limiter (RPM, TPM, concurrent requests)
   from the cluster's state backend, so with ``backend = "redis"`` the limit holds for
   the fleet; a tenant over its limit is refused at once (429 with ``Retry-After``), it
   does not wait and hold a place in a deployment's queue. A refusal at either step
   gives back what the other took: a budget refusal uses no RPM slot.

:meth:`Tenants.release` gives the permit back with the real token count and settles the
reservation to the request's real cost (whichever deployment answered). Requests without
a tenant, or with one that is not configured (an in-process caller's label), pass
through: no limits, no metrics (label cardinality stays bounded to the configured names).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from atomr_infer_core import (
    Budget,
    BudgetAction,
    ExecuteBatch,
    ModelPrice,
    RateLimits,
    TenantKey,
    TokenUsage,
)
from atomr_infer_core.errors import BudgetExceededError, ModelNotAllowedError

from ._budget import DAY, HOUR, WORST_CASE_OUTPUT_TOKENS, _RollingSum, over_budget
from ._metrics import ClusterMetrics

__all__ = ["TenantStatus", "TenantTicket", "Tenants"]

log = logging.getLogger("atomr_infer.tenants")

# settling must happen while the request is being cancelled, but not hang on a dead backend
_CLEANUP_TIMEOUT = 5.0


@attrs.frozen(kw_only=True)
class TenantStatus:
    """What ``/v1/status`` reports for one tenant (this process's counts; never the key)."""

    name: str
    weight: float
    #: the deployments and pipelines it may use; empty: all
    models: tuple[str, ...]
    requests: int
    #: refused by the tenant's own models, rate limits or budget
    rejected: int
    in_flight: int
    tokens_in: int
    tokens_out: int
    spend_hour_usd: float
    spend_day_usd: float
    rate_limits: RateLimits
    budget: Budget | None
    #: ``throttle`` budget over: the queue weight is halved
    throttled: bool = False


@attrs.frozen
class _Window:
    label: str
    limit: float
    seconds: float
    spend: Any  # a SpendWindow of the state backend


class _Tenant:
    """One configured tenant's limiter, budget windows, counters and metric children."""

    def __init__(self, key: TenantKey, state: Any, metrics: ClusterMetrics) -> None:
        self.config = key
        self.name = key.name
        self.models = frozenset(key.models)
        lim = key.rate_limits
        self.limiter = None
        if not lim.unlimited:
            # the key carries the limits: new limits get a fresh limiter (as deployments do)
            spec = f"{lim.requests_per_minute}/{lim.tokens_per_minute}/{lim.concurrent_requests}"
            self.limiter = state.limiter(
                f"tenant-limits:{key.name}:{spec}:{lim.strict}", lim, name=f"key {key.name}"
            )
        windows = []
        if key.budget is not None:
            for label, limit, seconds in (
                ("hour", key.budget.max_spend_per_hour_usd, HOUR),
                ("day", key.budget.max_spend_per_day_usd, DAY),
            ):
                if limit is not None:
                    windows.append(
                        _Window(
                            label, limit, seconds, state.window(f"tenant-budget:{key.name}:{label}")
                        )
                    )
        self.windows = tuple(windows)
        self.local = {"hour": _RollingSum(HOUR), "day": _RollingSum(DAY)}
        self.requests = self.rejected = self.in_flight = 0
        self.tokens_in = self.tokens_out = 0
        self.throttled = False
        self.warned_at: dict[str, float] = {}
        self.m_requests = {
            s: metrics.tenant_requests.labels(key.name, s)
            for s in ("ok", "error", "cancelled", "rejected")
        }
        self.m_tokens_in = metrics.tenant_tokens_in.labels(key.name)
        self.m_tokens_out = metrics.tenant_tokens_out.labels(key.name)
        self.m_cost = metrics.tenant_cost.labels(key.name)
        self.m_in_flight = metrics.tenant_in_flight.labels(key.name)
        self.m_spend = {w: metrics.tenant_spend.labels(key.name, w) for w in ("hour", "day")}

    @property
    def weight(self) -> float:
        return self.config.weight / 2 if self.throttled else self.config.weight


@attrs.define(eq=False)
class TenantTicket:
    """What :meth:`Tenants.admit` took for one request; :meth:`Tenants.release` it once."""

    tenant: _Tenant
    permit: Any = None
    #: the worst case reserved in ``windows`` at ``reserved_at`` (window clock)
    reserved: float = 0.0
    windows: tuple[_Window, ...] = ()
    reserved_at: float = 0.0
    done: bool = False


class Tenants:
    """The configured tenants of a cluster.

    Args:
        keys: the ``[[key]]`` tables.
        state: the cluster's state backend (limiters and spend windows by key).
        metrics: where the per-tenant series go.
        clock: the time base of the spend windows (the budgets' clock).
        route: model name → the deployment (or pipeline) name it resolves to; raises
            NotFoundError for an unknown one.
        price_of: model name → the price a request for it is reserved at (``None``:
            unpriced, no reservation).
    """

    def __init__(
        self,
        keys: Sequence[TenantKey],
        *,
        state: Any,
        metrics: ClusterMetrics,
        clock: Callable[[], float],
        route: Callable[[str], str],
        price_of: Callable[[str], ModelPrice | None],
    ) -> None:
        self._tenants = {k.name: _Tenant(k, state, metrics) for k in keys}
        self._clock = clock
        self._route = route
        self._price_of = price_of
        self._record_cost = getattr(state, "record_tenant_cost", None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tenants)

    def weight(self, tenant: str | None) -> float:
        """``tenant``'s share of a deployment's queue (1 without a configured tenant)."""
        found = self._tenants.get(tenant) if tenant is not None else None
        return 1.0 if found is None else found.weight

    def allows(self, tenant: str | None, model: str) -> bool:
        """May ``tenant`` use ``model`` (a deployment or pipeline name, or a model one
        serves)? Raises NotFoundError when ``model`` names nothing."""
        found = self._tenants.get(tenant) if tenant is not None else None
        if found is None or not found.models or model in found.models:
            return True
        return self._route(model) in found.models

    def check_model(self, tenant: str | None, model: str) -> None:
        """Raise ``ModelNotAllowedError`` (403) unless ``tenant`` may use ``model``."""
        if self.allows(tenant, model):
            return
        found = self._tenants[tenant]  # type: ignore[index]
        found.rejected += 1
        found.m_requests["rejected"].inc()
        raise ModelNotAllowedError(
            f"key {found.name!r} may not use model {model!r}; it may use: "
            f"{', '.join(sorted(found.models))} (see [[key]].models)",
            model=model,
        )

    def visible(self, tenant: str | None, names: Sequence[str]) -> list[str]:
        """The names of ``names`` that ``tenant`` may use (``GET /v1/models``)."""
        found = self._tenants.get(tenant) if tenant is not None else None
        if found is None or not found.models:
            return list(names)
        return [n for n in names if n in found.models]

    # -- once per request -------------------------------------------------------------

    async def admit(
        self, batch: ExecuteBatch, *, deadline: float, priced_as: Sequence[str] = ()
    ) -> TenantTicket | None:
        """Model ▸ budget ▸ rate limit of ``batch.tenant`` (the deployment's order);
        ``None`` without a tenant.

        Raises ModelNotAllowedError, BudgetExceededError, RateLimitedError (and
        BadRequestError when the request can never fit the tenant's TPM); what was taken
        is given back first, so a request refused by its budget takes no RPM slot and one
        refused by its rate limit holds no spend. ``priced_as``: the deployments whose
        worst cases together are reserved (a cascade's steps), else ``batch.model``'s.
        """
        tenant = self._tenants.get(batch.tenant) if batch.tenant is not None else None
        if tenant is None:
            return None
        self.check_model(tenant.name, batch.pipeline or batch.model)
        ticket = TenantTicket(tenant)
        try:
            await self._reserve(ticket, batch, priced_as or (batch.model,))
            if tenant.limiter is not None:
                ticket.permit = await tenant.limiter.acquire(
                    requests=1,
                    tokens=batch.estimated_total_tokens(),
                    deadline=deadline if math.isfinite(deadline) else None,
                    wait=False,
                )
        except BaseException:
            tenant.rejected += 1
            tenant.m_requests["rejected"].inc()
            self._give_back(ticket, None)
            await self._undo(ticket)
            raise
        tenant.in_flight += 1
        tenant.m_in_flight.set(tenant.in_flight)
        return ticket

    async def release(
        self,
        ticket: TenantTicket | None,
        *,
        usage: TokenUsage | None,
        cost: float | None,
        outcome: str,
    ) -> None:
        """Give back what ``admit`` took; charge ``usage`` and ``cost`` to the tenant.

        ``outcome`` is ``ok``, ``error`` or ``cancelled``. A second call does nothing.
        """
        if ticket is None or ticket.done:
            return
        ticket.done = True
        tenant = ticket.tenant
        tenant.in_flight -= 1
        tenant.m_in_flight.set(tenant.in_flight)
        tenant.requests += 1
        tenant.m_requests[outcome].inc()
        if usage is not None:
            tenant.tokens_in += usage.input_tokens
            tenant.tokens_out += usage.output_tokens
            tenant.m_tokens_in.inc(usage.input_tokens)
            tenant.m_tokens_out.inc(usage.output_tokens)
        self._give_back(ticket, usage)
        now = self._clock()
        spent = cost or 0.0
        self._account(tenant, spent - ticket.reserved, now)
        if spent:
            tenant.m_cost.inc(spent)
            if self._record_cost is not None:
                self._record_cost(tenant.name, now, spent)
        if ticket.windows:
            delta = spent - ticket.reserved
            with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
                for window in ticket.windows:
                    await window.spend.adjust(delta, now=now, reserved_at=ticket.reserved_at)

    def status(self) -> tuple[TenantStatus, ...]:
        now = self._clock()
        return tuple(
            TenantStatus(
                name=t.name,
                weight=t.config.weight,
                models=t.config.models,
                requests=t.requests,
                rejected=t.rejected,
                in_flight=t.in_flight,
                tokens_in=t.tokens_in,
                tokens_out=t.tokens_out,
                spend_hour_usd=t.local["hour"].total(now),
                spend_day_usd=t.local["day"].total(now),
                rate_limits=t.config.rate_limits,
                budget=t.config.budget,
                throttled=t.throttled,
            )
            for t in self._tenants.values()
        )

    # -- budget ------------------------------------------------------------------------

    def _worst_case(self, batch: ExecuteBatch, model: str) -> float:
        try:
            price = self._price_of(model)
        except LookupError:
            price = None
        if price is None:
            return 0.0
        out = batch.sampling.max_tokens or WORST_CASE_OUTPUT_TOKENS
        return price.worst_case(batch.input_token_estimate(), out * batch.sampling.n)

    async def _reserve(
        self, ticket: TenantTicket, batch: ExecuteBatch, models: Sequence[str]
    ) -> None:
        tenant = ticket.tenant
        if not tenant.windows:
            return
        amount = sum(self._worst_case(batch, model) for model in models)
        now = self._clock()
        budget = tenant.config.budget
        assert budget is not None
        reject = budget.on_exceeded is BudgetAction.REJECT
        over: list[_Window] = []
        ticket.reserved_at = now
        ticket.reserved = amount
        for window in tenant.windows:
            room = await window.spend.reserve(
                amount, limit=window.limit, window_s=window.seconds, now=now
            )
            if not room:
                if reject:
                    raise await self._exceeded(tenant, window, amount, now)
                over.append(window)
                await window.spend.reserve(amount, limit=math.inf, window_s=window.seconds, now=now)
            ticket.windows = (*ticket.windows, window)
        self._account(tenant, amount, now)
        for window in over:
            self._warn_once(tenant, window, now)
        if budget.on_exceeded is BudgetAction.THROTTLE and bool(over) != tenant.throttled:
            tenant.throttled = bool(over)
            log.warning(
                "key %s %s",
                tenant.name,
                "is over budget: its queue weight is halved"
                if over
                else "has budget again: full queue weight",
            )

    async def _exceeded(
        self, tenant: _Tenant, window: _Window, amount: float, now: float
    ) -> BudgetExceededError:
        return await over_budget(
            window,
            amount,
            now,
            who=f"key {tenant.name!r}",
            setting=f"[[key]].budget.max_spend_per_{window.label}_usd",
        )

    def _warn_once(self, tenant: _Tenant, window: _Window, now: float) -> None:
        last = tenant.warned_at.get(window.label)
        if last is not None and now - last < window.seconds:
            return
        tenant.warned_at[window.label] = now
        log.warning(
            "key %s is over its $%.6f budget per %s (on_exceeded = %s)",
            tenant.name,
            window.limit,
            window.label,
            tenant.config.budget.on_exceeded.value if tenant.config.budget else "warn",
        )

    def _account(self, tenant: _Tenant, amount: float, now: float) -> None:
        for label, tally in tenant.local.items():
            tally.add(amount, now)
            tenant.m_spend[label].set(tally.total(now))

    async def _undo(self, ticket: TenantTicket) -> None:
        """Refund the reservations of a request that was refused after all."""
        windows, ticket.windows = ticket.windows, ()
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
            for window in windows:
                await window.spend.adjust(
                    -ticket.reserved, now=ticket.reserved_at, reserved_at=ticket.reserved_at
                )

    def _give_back(self, ticket: TenantTicket, usage: TokenUsage | None) -> None:
        if ticket.permit is not None:
            permit, ticket.permit = ticket.permit, None
            permit.release(actual_tokens=None if usage is None else usage.total_tokens)
