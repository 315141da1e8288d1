"""The ``Deployment`` value object and its policies, with the original's defaults.

Durations are float seconds (the config file also takes ``"250ms"``, ``"30s"``,
``"5m"`` or integer milliseconds).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NewType

import attrs

from ._kinds import RuntimeKind, infer_runtime

# the schema generator resolves Config's annotations (and Pipeline's) in this module
from ._pipeline import BalanceStrategy, EscalateWhen, Pipeline, PipelineKind  # noqa: F401
from ._secret import Secret
from ._validators import at_least, greater_than, optional

__all__ = [
    "Budget",
    "BudgetAction",
    "CapacityPolicy",
    "CircuitBreakerConfig",
    "ClusterConfig",
    "Config",
    "Deployment",
    "JitterKind",
    "LogFormat",
    "Quantile",
    "RateLimits",
    "Replica",
    "RetryPolicy",
    "Seconds",
    "Serving",
    "StateBackendKind",
    "StateConfig",
    "StateMode",
    "TelemetryConfig",
    "TenantKey",
    "Timeouts",
    "UnavailablePolicy",
]

#: a duration in seconds; config files also take "250ms", "30s", "5m", "1h" or integer ms.
#: To a type checker it is a plain float (``Timeouts(read_timeout=2.5)`` type-checks); at run
#: time a distinct type, so the config converter and the schema know which floats are durations.
if TYPE_CHECKING:
    Seconds = float
else:
    Seconds = NewType("Seconds", float)
#: a quantile of an observed distribution: ``"p95"`` (1..99)
Quantile = NewType("Quantile", str)

_QUANTILE = re.compile(r"^p([1-9][0-9]?)$")


def _hedge_after(value: Any) -> float | str | None:
    """``hedge_after``: ``None``, a duration (seconds; config files also take "400ms" or
    integer ms), or ``"pNN"``, a quantile of the deployment's own observed TTFT."""
    if value is None:
        return None
    if isinstance(value, str) and _QUANTILE.match(value):
        return Quantile(value)
    if isinstance(value, float) and not isinstance(value, bool):
        seconds = value
    else:
        from .config import parse_duration

        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ValueError(f'{exc}; or a quantile of the observed TTFT such as "p95"') from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"must be > 0 (got {value!r})")
    return Seconds(seconds)


_ge0 = at_least(0)
_ge1 = at_least(1)
_gt0 = greater_than(0)
_opt = optional


class CapacityPolicy(str, enum.Enum):
    """What happens when a deployment's ``max_concurrent`` slots are all busy."""

    REJECT = "reject"
    QUEUE = "queue"
    FALLBACK = "fallback"


class ReplicaRouting(str, enum.Enum):
    """How a request picks among a deployment's replicas."""

    #: ``cache_aware`` for local runtimes, ``least_outstanding`` for remote ones
    AUTO = "auto"
    LEAST_OUTSTANDING = "least_outstanding"
    #: the replica that served the request's prompt prefix (it holds it in its prefix
    #: cache), unless its load diverges from the least loaded one's
    CACHE_AWARE = "cache_aware"


class JitterKind(str, enum.Enum):
    NONE = "none"
    EQUAL = "equal"
    FULL = "full"


class BudgetAction(str, enum.Enum):
    REJECT = "reject"
    WARN = "warn"
    THROTTLE = "throttle"


class LogFormat(str, enum.Enum):
    """How ``serve`` writes its log: fixed-format text, or one JSON object per line."""

    TEXT = "text"
    JSON = "json"


class StateBackendKind(str, enum.Enum):
    MEMORY = "memory"
    REDIS = "redis"


class StateMode(str, enum.Enum):
    """How a shared backend enforces limits: one atomic script per operation (strict)."""

    STRICT = "strict"
    APPROXIMATE = "approximate"


class UnavailablePolicy(str, enum.Enum):
    """What requests do while the shared state backend cannot be reached."""

    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"


@attrs.frozen(kw_only=True)
class Serving:
    max_concurrent: int = attrs.field(default=32, validator=_ge1)
    on_capacity_exhausted: CapacityPolicy = CapacityPolicy.QUEUE
    #: bound of the waiting queue (``queue`` policy); a full queue rejects
    max_queued: int = attrs.field(default=1024, validator=_ge0)
    #: how requests pick a replica when ``replicas > 1``
    routing: ReplicaRouting = attrs.field(default=ReplicaRouting.AUTO, converter=ReplicaRouting)


@attrs.frozen(kw_only=True)
class Replica:
    """One copy of a deployment's runner."""

    deployment: str
    replica_index: int = attrs.field(validator=_ge0)
    node: str | None = None
    gpu_indices: tuple[int, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen(kw_only=True)
class RateLimits:
    """Per-deployment limits; ``None`` means unlimited."""

    requests_per_minute: int | None = attrs.field(default=None, validator=_opt(_ge1))
    tokens_per_minute: int | None = attrs.field(default=None, validator=_opt(_ge1))
    concurrent_requests: int | None = attrs.field(default=None, validator=_opt(_ge1))
    #: with a shared (redis) backend: one atomic check per acquire instead of synced counters
    strict: bool = False

    @property
    def unlimited(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.concurrent_requests is None
        )


@attrs.frozen(kw_only=True)
class RetryPolicy:
    max_retries: int = attrs.field(default=3, validator=_ge0)
    initial_backoff: Seconds = attrs.field(default=1.0, validator=_ge0)
    max_backoff: Seconds = attrs.field(default=60.0, validator=_ge0)
    backoff_multiplier: float = attrs.field(default=2.0, validator=_ge1)
    jitter: JitterKind = JitterKind.EQUAL
    respect_retry_after: bool = True


@attrs.frozen(kw_only=True)
class Timeouts:
    #: from arrival to the first byte of output: queueing, rate-limit waits and retries
    request_timeout: Seconds = attrs.field(default=30.0, validator=_gt0)
    #: the longest gap allowed between two chunks of a stream
    read_timeout: Seconds = attrs.field(default=10.0, validator=_gt0)
    #: TCP/TLS connect to an upstream
    connect_timeout: Seconds = attrs.field(default=10.0, validator=_gt0)


@attrs.frozen(kw_only=True)
class CircuitBreakerConfig:
    failure_threshold: int = attrs.field(default=10, validator=_ge1)
    open_duration: Seconds = attrs.field(default=30.0, validator=_ge0)
    half_open_max_probes: int = attrs.field(default=1, validator=_ge1)


@attrs.frozen(kw_only=True)
class Budget:
    max_spend_per_hour_usd: float | None = attrs.field(default=None, validator=_opt(_ge0))
    max_spend_per_day_usd: float | None = attrs.field(default=None, validator=_opt(_ge0))
    on_exceeded: BudgetAction = BudgetAction.REJECT


def _fallbacks(value: Any) -> tuple[str, ...]:
    return tuple(value)


def _runtime(value: Any) -> RuntimeKind | None:
    return None if value is None else RuntimeKind(value)


def _raw_table(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@attrs.frozen(kw_only=True)
class Deployment:
    """A model served under a name.

    ``name`` is what clients send as ``model``; ``model`` is what the runtime is asked
    for. ``runtime_config`` stays a raw table here: the runtime plugin's own attrs class
    structures it.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    model: str = attrs.field(validator=attrs.validators.instance_of(str))
    runtime: RuntimeKind | None = attrs.field(default=None, converter=_runtime)
    runtime_config: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_raw_table, eq=False, hash=False
    )
    gpus: int | None = attrs.field(default=None, validator=_opt(_ge0))
    replicas: int = attrs.field(default=1, validator=_ge1)
    idempotent: bool = True
    fallbacks: tuple[str, ...] = attrs.field(default=(), converter=_fallbacks)
    #: no first chunk by then: a second attempt starts on a sibling replica (replicas > 1)
    #: or the first fallback; the first to answer wins, the other is cancelled. A duration,
    #: or "p95" (the deployment's own observed time to first chunk); idempotent only
    hedge_after: Seconds | Quantile | None = attrs.field(default=None, converter=_hedge_after)
    #: a stream that fails after output began continues on the next fallback, which is
    #: asked to continue the partial answer (one stream, no repeated text)
    continue_on_failure: bool = False
    serving: Serving = attrs.Factory(Serving)
    rate_limits: RateLimits = attrs.Factory(RateLimits)
    retry: RetryPolicy = attrs.Factory(RetryPolicy)
    timeouts: Timeouts = attrs.Factory(Timeouts)
    circuit_breaker: CircuitBreakerConfig = attrs.Factory(CircuitBreakerConfig)
    budget: Budget | None = None

    def problems(self) -> list[tuple[str, str]]:
        """Semantic problems as ``(relative path, message)`` pairs (empty when valid)."""
        out: list[tuple[str, str]] = []
        if not self.name.strip():
            out.append(("name", "must not be empty"))
        if not self.model.strip():
            out.append(("model", "must not be empty"))
        if self.name in self.fallbacks:
            out.append(("fallbacks", f"a deployment cannot fall back to itself ({self.name!r})"))
        if self.hedge_after is not None and not self.idempotent:
            out.append(
                (
                    "hedge_after",
                    "needs idempotent = true (a hedge sends the request twice); "
                    "remove hedge_after or set idempotent = true",
                )
            )
        if self.retry.max_backoff < self.retry.initial_backoff:
            out.append(("retry.max_backoff", "must be >= retry.initial_backoff"))
        if self.serving.on_capacity_exhausted is CapacityPolicy.FALLBACK and not self.fallbacks:
            out.append(
                (
                    "serving.on_capacity_exhausted",
                    "is 'fallback' but the deployment lists no fallbacks",
                )
            )
        return out

    def validate(self) -> None:
        """Raise :class:`~atomr_infer_core.errors.ConfigError` listing every problem."""
        from .errors import ConfigError

        problems = self.problems()
        if problems:
            raise ConfigError((f"deployment[{self.name!r}].{p}", m) for p, m in problems)

    def effective_runtime(self) -> RuntimeKind:
        """The explicit ``runtime``, else the one inferred from ``model``.

        Raises ConfigError when neither gives one.
        """
        if self.runtime is not None:
            return self.runtime
        inferred = infer_runtime(self.model)
        if inferred is None:
            from .errors import ConfigError

            raise ConfigError(
                [
                    (
                        f"deployment[{self.name!r}].runtime",
                        f"cannot infer a runtime from {self.model!r}",
                    )
                ]
            )
        return inferred

    def replica_values(self) -> tuple[Replica, ...]:
        return tuple(Replica(deployment=self.name, replica_index=i) for i in range(self.replicas))


@attrs.frozen(kw_only=True)
class ClusterConfig:
    name: str = "atomr"
    #: host:port the gateway listens on
    bind: str = "127.0.0.1:8080"
    #: gateway keys clients must send as ``Authorization: Bearer``; empty means no auth
    api_keys: tuple[Secret, ...] = attrs.field(default=(), converter=tuple)
    #: serve without keys on a non-loopback address (refused otherwise)
    allow_unauthenticated: bool = False
    #: how long in-flight requests may finish after SIGTERM/SIGINT
    shutdown_grace: Seconds = attrs.field(default=30.0, validator=_ge0)
    #: largest request body the gateway reads
    max_request_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_ge1)
    #: the original's placeholder for multi-node; accepted and unused
    endpoint: str | None = None
    #: ``serve``'s log lines: ``text`` or ``json`` (one object per line); ``--log-format`` wins
    log_format: LogFormat = LogFormat.TEXT
    #: browser origins allowed to call the gateway (CORS); empty: CORS off; ``"*"``: any
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @property
    def host(self) -> str:
        return self.bind.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])


@attrs.frozen(kw_only=True)
class StateConfig:
    backend: StateBackendKind = StateBackendKind.MEMORY
    #: ``redis://host:port/db`` (a Secret: it may hold a password)
    url: Secret | None = None
    #: approximate limiter: how often node counters are synced
    sync_interval: Seconds = attrs.field(default=0.1, validator=_gt0)
    #: prefix of every key in the shared store
    key_prefix: str = "atomr"
    #: strict: one atomic server-side script per acquire and release
    mode: StateMode = StateMode.STRICT
    #: slots and token reservations of a process that died expire after this
    lease: Seconds = attrs.field(default=30.0, validator=_gt0)
    #: the backend is unreachable: 503 state_unavailable (closed) or local limits (open)
    on_unavailable: UnavailablePolicy = UnavailablePolicy.FAIL_CLOSED
    #: memory backend: a SQLite file that keeps spend across restarts (relative to the
    #: config file). Unset in a project file:
    #: ``$XDG_STATE_HOME/atomr-infer/<cluster>/spend.sqlite``; ``""`` (and a Config built
    #: in code): spend lives in memory only
    spend_ledger: str | None = None


@attrs.frozen(kw_only=True)
class TelemetryConfig:
    """OpenTelemetry export (needs ``pip install 'atomr-infer-trio[otel]'``).

    Tracing is on when ``endpoint`` is set here or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is in
    the environment; the other ``OTEL_*`` variables are honoured by the SDK as usual.
    """

    #: OTLP/HTTP collector base URL, e.g. ``http://127.0.0.1:4318``
    endpoint: str | None = None
    #: ``service.name`` of the spans and metrics
    service_name: str = "atomr-infer"
    #: record prompts and answers on spans (``gen_ai.input.messages`` / ``gen_ai.output.messages``)
    capture_content: bool = False


@attrs.frozen(kw_only=True)
class TenantKey:
    """A tenant (``[[key]]``): its own gateway key, allowed models, limits and budget.

    ``name`` is what logs, metrics, status and the cost report show; ``key`` never
    appears anywhere. ``models`` lists deployment (or pipeline) names the key may use;
    empty means all. ``weight`` is the tenant's share of a deployment's queued capacity
    when several tenants wait for it.
    """

    #: shown in logs, metrics, status and the cost report (the key never is)
    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    #: the gateway key clients of this tenant send
    key: Secret = attrs.field(repr=False)
    #: deployment or pipeline names the key may use; empty: all
    models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: its share of a deployment's queued capacity when several tenants wait
    weight: float = attrs.field(default=1.0, validator=_gt0)
    #: the tenant's own limits, over every deployment it uses
    rate_limits: RateLimits = attrs.Factory(RateLimits)
    #: the tenant's own spend limits
    budget: Budget | None = None

    def problems(self) -> list[tuple[str, str]]:
        """Semantic problems as ``(relative path, message)`` pairs (empty when valid)."""
        out: list[tuple[str, str]] = []
        if not self.name.strip():
            out.append(("name", "must not be empty"))
        if not self.key:
            out.append(("key", "must not be empty (an unset ${VAR:-} expands to nothing)"))
        return out


@attrs.frozen(kw_only=True)
class Config:
    """A whole project file: ``[cluster]``, ``[state]``, ``[telemetry]``, ``[[deployment]]``,
    ``[[key]]``, ``[[pipeline]]``."""

    cluster: ClusterConfig = attrs.Factory(ClusterConfig)
    state: StateConfig = attrs.Factory(StateConfig)
    telemetry: TelemetryConfig = attrs.Factory(TelemetryConfig)
    deployments: tuple[Deployment, ...] = attrs.field(default=(), converter=tuple)
    #: tenants: ``[[key]]`` tables
    keys: tuple[TenantKey, ...] = attrs.field(default=(), converter=tuple)

    #: model names composed of deployments: cascades and balances (``[[pipeline]]``)
    pipelines: tuple[Pipeline, ...] = attrs.field(default=(), converter=tuple)

    def pipeline(self, name: str) -> Pipeline:
        for pipe in self.pipelines:
            if pipe.name == name:
                return pipe
        raise KeyError(name)

    def deployment(self, name: str) -> Deployment:
        for dep in self.deployments:
            if dep.name == name:
                return dep
        raise KeyError(name)
