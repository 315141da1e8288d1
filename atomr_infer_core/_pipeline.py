"""The ``[[pipeline]]`` value object: a model name composed of deployments.

- ``kind = "cascade"``: ``steps`` in order; a step's answer is returned unless one of
  ``escalate_when`` holds, then the next step is asked.
- ``kind = "balance"``: one model name served by ``members``; ``strategy`` picks one per
  request, the others (then their fallbacks) take over when it fails before output.

A cascade step names a deployment or a balance pipeline; a balance member names a
deployment. (So no pipeline can reach itself: there are no cycles to check.)
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from ._validators import at_most, optional

__all__ = ["BalanceStrategy", "EscalateWhen", "Pipeline", "PipelineKind"]


class PipelineKind(str, enum.Enum):
    CASCADE = "cascade"
    BALANCE = "balance"


class EscalateWhen(str, enum.Enum):
    """Why a cascade step's answer is not returned and the next step is asked."""

    #: the answer stopped at max_tokens (finish reason ``length``)
    LENGTH = "length"
    #: the step refused (finish reason ``content_filter``, or a refusal error)
    REFUSAL = "refusal"
    #: the request asked for JSON (json_object / json_schema) and the answer is not
    #: valid JSON, or does not validate against the schema
    INVALID_JSON = "invalid_json"
    #: the answer's mean token logprob is below ``min_mean_logprob``
    LOW_CONFIDENCE = "low_confidence"


class BalanceStrategy(str, enum.Enum):
    #: power of two choices on a decaying latency average (errors count as slow)
    LATENCY = "latency"
    #: the member with the fewest requests in flight (ties round-robin)
    LEAST_OUTSTANDING = "least_outstanding"
    #: at random, in proportion to ``weights``
    WEIGHTED = "weighted"


#: escalate_when of a cascade that does not list it
DEFAULT_ESCALATE_WHEN = (EscalateWhen.LENGTH, EscalateWhen.REFUSAL, EscalateWhen.INVALID_JSON)
#: min_mean_logprob of a cascade that does not set it
DEFAULT_MIN_MEAN_LOGPROB = -1.0


def _names(value: Any) -> tuple[str, ...]:
    return tuple(value)


def _escalations(value: Any) -> tuple[EscalateWhen, ...] | None:
    return None if value is None else tuple(EscalateWhen(v) for v in value)


def _weights(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _strategy(value: Any) -> BalanceStrategy | None:
    return None if value is None else BalanceStrategy(value)


@attrs.frozen(kw_only=True)
class Pipeline:
    """A model name clients send that composes deployments (a cascade, or a balance)."""

    #: what clients send as ``model``; must differ from every deployment name
    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    #: ``cascade`` (steps in order, escalating) or ``balance`` (one of several members)
    kind: PipelineKind = attrs.field(converter=PipelineKind)
    #: cascade: the deployments (or balance pipelines) to try, cheapest first
    steps: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: cascade: when a step's answer is not returned (default: length, refusal, invalid_json)
    escalate_when: tuple[EscalateWhen, ...] | None = attrs.field(
        default=None, converter=_escalations
    )
    #: cascade, ``low_confidence``: escalate when the mean token logprob is below this
    #: (default -1.0)
    min_mean_logprob: float | None = attrs.field(default=None, validator=optional(at_most(0.0)))
    #: balance: the deployments serving this name
    members: tuple[str, ...] = attrs.field(default=(), converter=_names)
    #: balance: latency | least_outstanding | weighted (default latency)
    strategy: BalanceStrategy | None = attrs.field(default=None, converter=_strategy)
    #: balance, ``weighted``: one weight per member, in the order of ``members``
    #: (default: equal)
    weights: tuple[float, ...] = attrs.field(default=(), converter=_weights)

    @property
    def escalations(self) -> tuple[EscalateWhen, ...]:
        """The cascade's escalation conditions (the default when none are listed)."""
        return DEFAULT_ESCALATE_WHEN if self.escalate_when is None else self.escalate_when

    @property
    def threshold(self) -> float:
        """The cascade's ``min_mean_logprob`` (the default when unset)."""
        if self.min_mean_logprob is None:
            return DEFAULT_MIN_MEAN_LOGPROB
        return self.min_mean_logprob

    @property
    def balance_strategy(self) -> BalanceStrategy:
        return self.strategy or BalanceStrategy.LATENCY

    def member_weights(self) -> tuple[float, ...]:
        """One weight per member (equal ones when ``weights`` is empty)."""
        return self.weights or tuple(1.0 for _ in self.members)

    def problems(self) -> list[tuple[str, str]]:
        """Problems of the pipeline alone as ``(relative path, message)`` pairs; the
        names it refers to are checked against the whole config by the loader."""
        out: list[tuple[str, str]] = []
        if not self.name.strip():
            out.append(("name", "must not be empty"))
        if self.kind is PipelineKind.CASCADE:
            out += self._cascade_problems()
        else:
            out += self._balance_problems()
        return out

    def _cascade_problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if len(self.steps) < 2:
            out.append(("steps", f"a cascade needs at least two steps (got {len(self.steps)})"))
        out += _duplicates("steps", self.steps)
        for key in ("members", "strategy", "weights"):
            if getattr(self, key) not in ((), None):
                out.append((key, "applies to kind = 'balance' only; a cascade lists steps"))
        return out

    def _balance_problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if len(self.members) < 2:
            out.append(
                ("members", f"a balance needs at least two members (got {len(self.members)})")
            )
        out += _duplicates("members", self.members)
        for key in ("steps", "escalate_when", "min_mean_logprob"):
            if getattr(self, key) not in ((), None):
                out.append((key, "applies to kind = 'cascade' only; a balance lists members"))
        if self.weights:
            if self.balance_strategy is not BalanceStrategy.WEIGHTED:
                out.append(("weights", "applies to strategy = 'weighted' only"))
            elif len(self.weights) != len(self.members):
                out.append(
                    (
                        "weights",
                        f"needs one weight per member ({len(self.members)}), "
                        f"got {len(self.weights)}",
                    )
                )
            for i, weight in enumerate(self.weights):
                if not weight > 0:
                    out.append((f"weights[{i}]", f"must be > 0 (got {weight:g})"))
        return out


def _duplicates(key: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        if name in seen:
            out.append((f"{key}[{i}]", f"{name!r} is listed twice (also {key}[{seen[name]}])"))
        seen.setdefault(name, i)
    return out
