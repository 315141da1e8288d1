"""Pipelines, pure: when a cascade escalates, and which balance member serves.

No trio, no clock of its own: the cluster passes ``now`` and the members' live state,
and applies the decisions (:mod:`._cascade` runs the steps; ``Cluster.candidates``
orders a balance's members).

Balance strategies:

- ``latency``: power of two choices (Mitzenmacher): two usable members at random, the
  one with the lower cost wins, cost = decayed latency average * (requests in flight + 1).
  The average is a peak EWMA (Finagle's, Linkerd's): a sample above it replaces it, one
  below moves it by ``EWMA_ALPHA``; an error counts as a sample of ``ERROR_PENALTY_S``.
  Between samples the average decays toward zero with half-life ``DECAY_HALF_LIFE_S``,
  so a member avoided for being slow is tried again later and re-measured.
- ``least_outstanding``: the fewest requests in flight (queued or running), ties
  round-robin.
- ``weighted``: at random in proportion to the member weights.

The members after the pick follow in order of preference (cost, load, weight); the
cluster appends their fallbacks, and the members it could not use at all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from atomr_infer_core import (
    BalanceStrategy,
    EscalateWhen,
    ExecuteBatch,
    FinishReason,
    Pipeline,
    Tokens,
)
from atomr_infer_core.errors import (
    BadRequestError,
    ContentFilteredError,
    ContextLengthExceededError,
    InferenceError,
    NotFoundError,
    PayloadTooLargeError,
)

from ._json_check import json_problem
from ._routing import least_outstanding

__all__ = [
    "DECAY_HALF_LIFE_S",
    "ERROR_PENALTY_S",
    "EWMA_ALPHA",
    "REQUEST_ERRORS",
    "BalanceMemberStatus",
    "Balancer",
    "Escalation",
    "MemberView",
    "PipelineStatus",
    "escalation",
    "mean_logprob",
    "step_error_escalation",
]

#: weight of a sample below the average (a sample above it replaces the average)
EWMA_ALPHA = 0.3
#: a failed attempt counts as this slow
ERROR_PENALTY_S = 5.0
#: an unobserved member's average halves every this many seconds
DECAY_HALF_LIFE_S = 10.0

#: errors about the request itself: another deployment would refuse it too, so neither a
#: fallback nor the next cascade step is tried (the request path's own list)
REQUEST_ERRORS: tuple[type[InferenceError], ...] = (
    BadRequestError,
    ContextLengthExceededError,
    ContentFilteredError,
    PayloadTooLargeError,
    NotFoundError,
)


# ---------------------------------------------------------------- cascade


@attrs.frozen
class Escalation:
    """Why a cascade step's answer was not returned: ``reason`` is an ``escalate_when``
    value or ``"error"`` (the step failed as a fallback would be tried for)."""

    reason: str
    detail: str


def mean_logprob(entries: Iterable[Mapping[str, Any]] | None) -> float | None:
    """The mean of the ``logprob`` of OpenAI-shaped logprob entries (``None``: none)."""
    values = [
        float(e["logprob"])
        for e in entries or ()
        if isinstance(e, Mapping) and isinstance(e.get("logprob"), int | float)
    ]
    return sum(values) / len(values) if values else None


def escalation(pipeline: Pipeline, batch: ExecuteBatch, tokens: Tokens) -> Escalation | None:
    """The first of the cascade's ``escalate_when`` conditions ``tokens`` meets, in the
    order listed (any choice meeting it counts), else ``None``.

    ``low_confidence`` needs the step to report logprobs: an answer without any is not
    judged (it does not escalate).
    """
    for condition in pipeline.escalations:
        for choice in tokens.choices or ():
            found = _condition(condition, pipeline, batch, choice)
            if found is not None:
                return Escalation(condition.value, found)
    return None


def _condition(
    condition: EscalateWhen, pipeline: Pipeline, batch: ExecuteBatch, choice: Any
) -> str | None:
    if condition is EscalateWhen.LENGTH and choice.finish_reason is FinishReason.LENGTH:
        return "the answer stopped at max_tokens"
    if condition is EscalateWhen.REFUSAL and choice.finish_reason is FinishReason.CONTENT_FILTER:
        return "the step refused (content_filter)"
    if condition is EscalateWhen.INVALID_JSON and not choice.tool_calls:
        return json_problem(choice.text, batch.response_format)
    if condition is EscalateWhen.LOW_CONFIDENCE:
        mean = mean_logprob(choice.logprobs)
        if mean is not None and mean < pipeline.threshold:
            return f"mean token logprob {mean:.3f} < min_mean_logprob {pipeline.threshold:g}"
    return None


def step_error_escalation(pipeline: Pipeline, error: InferenceError) -> Escalation | None:
    """Whether a step that failed (before the client saw output) escalates: where a
    fallback would be tried, and a refusal where ``refusal`` is listed; ``None``: the
    error goes to the client."""
    if isinstance(error, ContentFilteredError):
        if EscalateWhen.REFUSAL in pipeline.escalations:
            return Escalation(EscalateWhen.REFUSAL.value, error.message)
        return None
    if isinstance(error, REQUEST_ERRORS):
        return None
    return Escalation("error", f"{error.kind}: {error.message}")


# ---------------------------------------------------------------- balance


@attrs.frozen
class MemberView:
    """A balance member as the cluster sees it now."""

    name: str
    #: serving, breaker not open, not paused or out of requests by its rate limits
    usable: bool
    #: requests queued or running on it
    outstanding: int = 0


@attrs.define
class _Average:
    value: float
    at: float


@attrs.frozen(kw_only=True)
class BalanceMemberStatus:
    name: str
    usable: bool
    outstanding: int
    #: the decayed latency average (ms), ``None`` before the first sample
    latency_ms: float | None
    weight: float


@attrs.frozen(kw_only=True)
class PipelineStatus:
    """What ``/v1/status`` shows for one pipeline."""

    name: str
    kind: str
    #: cascade: its steps
    steps: tuple[str, ...] = ()
    #: balance: its strategy and members
    strategy: str | None = None
    members: tuple[BalanceMemberStatus, ...] = ()


class Balancer:
    """The member choice of one balance pipeline, and its members' latency averages.

    ``rng`` is the random source (tests pass a seeded one)."""

    def __init__(self, pipeline: Pipeline, *, rng: random.Random | None = None) -> None:
        self.pipeline = pipeline
        self.strategy = pipeline.balance_strategy
        self.weights = dict(zip(pipeline.members, pipeline.member_weights(), strict=True))
        self._rng = rng or random.Random()
        self._averages: dict[str, _Average] = {}
        self._last_pick = -1

    def observe(self, member: str, *, latency_s: float, ok: bool, now: float) -> None:
        """One finished attempt on ``member``: its time to first byte (or to failing)."""
        sample = max(0.0, latency_s) if ok else max(ERROR_PENALTY_S, latency_s)
        current = self.latency(member, now)
        if current is None or sample >= current:
            value = sample
        else:
            value = current + EWMA_ALPHA * (sample - current)
        self._averages[member] = _Average(value, now)

    def latency(self, member: str, now: float) -> float | None:
        """``member``'s latency average decayed to ``now`` (``None``: never observed)."""
        avg = self._averages.get(member)
        if avg is None:
            return None
        elapsed = max(0.0, now - avg.at)
        return avg.value * math.pow(0.5, elapsed / DECAY_HALF_LIFE_S)

    def order(self, members: Sequence[MemberView], now: float) -> tuple[list[str], list[str]]:
        """``(usable members, best first; the unusable ones, in config order)``."""
        usable = [m for m in members if m.usable]
        unusable = [m.name for m in members if not m.usable]
        if not usable:
            return [], unusable
        if self.strategy is BalanceStrategy.LEAST_OUTSTANDING:
            ranked = self._by_outstanding(usable)
        elif self.strategy is BalanceStrategy.WEIGHTED:
            ranked = self._by_weight(usable)
        else:
            ranked = self._by_latency(usable, now)
        return ranked, unusable

    def _cost(self, member: MemberView, now: float) -> tuple[float, int]:
        latency = self.latency(member.name, now) or 0.0
        return latency * (member.outstanding + 1), member.outstanding

    def _by_latency(self, usable: list[MemberView], now: float) -> list[str]:
        rest = sorted(usable, key=lambda m: self._cost(m, now))
        if len(usable) >= 2:
            a, b = self._rng.sample(usable, 2)
            pick = a if self._cost(a, now) <= self._cost(b, now) else b
            rest.remove(pick)
            rest.insert(0, pick)
        return [m.name for m in rest]

    def _by_outstanding(self, usable: list[MemberView]) -> list[str]:
        index = {name: i for i, name in enumerate(self.pipeline.members)}
        loads = [(index.get(m.name, 0), m.outstanding) for m in usable]
        first = least_outstanding(loads, after=self._last_pick)
        self._last_pick = first if first is not None else -1
        rest = sorted(usable, key=lambda m: (m.outstanding, index.get(m.name, 0)))
        ranked = [m.name for m in rest]
        pick = self.pipeline.members[first] if first is not None else ranked[0]
        ranked.remove(pick)
        return [pick, *ranked]

    def _by_weight(self, usable: list[MemberView]) -> list[str]:
        weights = [self.weights.get(m.name, 1.0) for m in usable]
        (pick,) = self._rng.choices(usable, weights=weights)
        rest = sorted(
            (m for m in usable if m is not pick), key=lambda m: -self.weights.get(m.name, 1.0)
        )
        return [pick.name, *(m.name for m in rest)]

    def status(self, members: Sequence[MemberView], now: float) -> PipelineStatus:
        rows = []
        for m in members:
            latency = self.latency(m.name, now)
            rows.append(
                BalanceMemberStatus(
                    name=m.name,
                    usable=m.usable,
                    outstanding=m.outstanding,
                    latency_ms=None if latency is None else round(latency * 1000, 3),
                    weight=self.weights.get(m.name, 1.0),
                )
            )
        return PipelineStatus(
            name=self.pipeline.name,
            kind=self.pipeline.kind.value,
            strategy=self.strategy.value,
            members=tuple(rows),
        )
