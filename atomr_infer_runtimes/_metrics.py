"""Prometheus metrics of one cluster, in a registry of its own (two clusters never mix).

Counters are exposed with ``_total`` and without the ``_created`` series (one per
labelled child, and noise to every dashboard); the registry also carries the process
metrics (CPU, memory, file descriptors) of the gateway's process.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import Metric

__all__ = ["BREAKER_STATE_VALUES", "ClusterMetrics", "DeploymentMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)

#: gauge values of ``atomr_breaker_state``
BREAKER_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class DeploymentMetrics:
    """One deployment's metric children, bound once (``labels()`` is costly per call)."""

    def __init__(self, m: ClusterMetrics, name: str, model: str) -> None:
        self.model = model
        self.ok = m.requests.labels(name, "ok", "")
        self.ttft = m.ttft.labels(name)
        self.latency = m.latency.labels(name)
        self.tpot = m.tpot.labels(name, model)
        self.tokens_in = m.tokens_in.labels(name)
        self.tokens_out = m.tokens_out.labels(name)
        self.cost = m.cost.labels(name)
        self.queue_depth = m.queue_depth.labels(name)
        self.in_flight = m.in_flight.labels(name)
        self.limiter_wait = m.limiter_wait.labels(name)
        self.queue_wait = m.queue_wait.labels(name)
        self.spend = {w: m.spend.labels(name, w) for w in ("hour", "day")}


class ClusterMetrics:
    """Every metric the runtime layer records.

    ``render()`` returns the Prometheus text exposition; gauges that mirror live state
    (queue depth, in flight, breaker state, spend) are refreshed by the cluster's
    ``refresh`` callback first.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "atomr_requests",
            "Requests finished, by deployment, status (ok|error|cancelled) and error kind.",
            ["deployment", "status", "error_kind"],
            registry=r,
        )
        self.ttft = Histogram(
            "atomr_time_to_first_token_seconds",
            "From arrival to the first chunk.",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "atomr_request_duration_seconds",
            "From arrival to the last chunk.",
            ["deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "atomr_time_per_output_token_seconds",
            "Per streamed request: (last chunk - first chunk) / (output tokens - 1); "
            "model is the deployment's configured model.",
            ["deployment", "model"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.tokens_in = Counter(
            "atomr_tokens_in", "Input tokens billed.", ["deployment"], registry=r
        )
        self.tokens_out = Counter(
            "atomr_tokens_out", "Output tokens billed.", ["deployment"], registry=r
        )
        self.cost = Counter(
            "atomr_cost_usd", "Spend from usage x the price table.", ["deployment"], registry=r
        )
        self.queue_depth = Gauge(
            "atomr_queue_depth", "Requests waiting for capacity.", ["deployment"], registry=r
        )
        self.in_flight = Gauge(
            "atomr_in_flight", "Requests dispatched to a replica.", ["deployment"], registry=r
        )
        self.breaker_state = Gauge(
            "atomr_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["deployment"],
            registry=r,
        )
        self.limiter_wait = Histogram(
            "atomr_rate_limit_wait_seconds",
            "Time spent waiting for a rate-limit permit.",
            ["deployment"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "atomr_queue_wait_seconds",
            "Time spent waiting for a capacity slot.",
            ["deployment"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "atomr_replica_restarts", "Replica restarts.", ["deployment"], registry=r
        )
        self.fallbacks = Counter(
            "atomr_fallbacks",
            "Requests moved to a fallback deployment, by the deployment they left.",
            ["deployment", "reason"],
            registry=r,
        )
        self.escalations = Counter(
            "atomr_pipeline_escalations",
            "Cascade steps whose answer was not returned, by pipeline, step and reason.",
            ["pipeline", "step", "reason"],
            registry=r,
        )
        self.balance_picks = Counter(
            "atomr_pipeline_picks",
            "Requests a balance pipeline sent first to each member.",
            ["pipeline", "member"],
            registry=r,
        )
        self.hedges = Counter(
            "atomr_hedges",
            "Hedged attempts started (no first chunk by hedge_after), by the hedged deployment.",
            ["deployment"],
            registry=r,
        )
        self.hedges_won = Counter(
            "atomr_hedges_won",
            "Hedged attempts that answered first, by the hedged deployment.",
            ["deployment"],
            registry=r,
        )
        self.continuations = Counter(
            "atomr_continuations",
            "Streams that failed after output began and continued on a fallback, by the "
            "deployment that failed.",
            ["deployment"],
            registry=r,
        )
        self.budget_warnings = Counter(
            "atomr_budget_warnings",
            "Budget windows exceeded under on_exceeded = warn|throttle.",
            ["deployment", "window"],
            registry=r,
        )
        self.spend = Gauge(
            "atomr_budget_spend_usd",
            "Spend in the current rolling window.",
            ["deployment", "window"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "atomr_upstream_retries",
            "Retries the remote engines of the deployment's replicas made.",
            ["deployment"],
            registry=r,
        )
        self.info = Gauge(
            "atomr_deployment_info",
            "1 per deployment, labelled with its model and runtime (join on deployment).",
            ["deployment", "model", "runtime"],
            registry=r,
        )
        self.deployment_up = Gauge(
            "atomr_deployment_serving",
            "1 when the deployment is serving.",
            ["deployment"],
            registry=r,
        )
        self.state_available = Gauge(
            "atomr_state_available",
            "1 while the shared state backend answers (always 1 for memory).",
            registry=r,
        )
        self.state_unavailable = Counter(
            "atomr_state_unavailable_calls",
            "Calls to the shared state backend that failed (unreachable or too slow).",
            registry=r,
        )
        # per tenant ([[key]]): the label only ever takes the configured names
        self.tenant_requests = Counter(
            "atomr_tenant_requests",
            "Requests of a tenant ([[key]] name) finished, by status "
            "(ok|error|cancelled|rejected: refused by the tenant's own limits or models).",
            ["tenant", "status"],
            registry=r,
        )
        self.tenant_tokens_in = Counter(
            "atomr_tenant_tokens_in", "Input tokens billed to a tenant.", ["tenant"], registry=r
        )
        self.tenant_tokens_out = Counter(
            "atomr_tenant_tokens_out", "Output tokens billed to a tenant.", ["tenant"], registry=r
        )
        self.tenant_cost = Counter(
            "atomr_tenant_cost_usd",
            "A tenant's spend from usage x the price table.",
            ["tenant"],
            registry=r,
        )
        self.tenant_spend = Gauge(
            "atomr_tenant_spend_usd",
            "A tenant's spend in the current rolling window.",
            ["tenant", "window"],
            registry=r,
        )
        self.tenant_in_flight = Gauge(
            "atomr_tenant_in_flight", "A tenant's requests being served.", ["tenant"], registry=r
        )
        self.state_available.set(1.0)
        ProcessCollector(registry=r)
        self._exposed = _WithoutCreated(r)
        self._refreshers: list[Callable[[], None]] = []
        self._bound: dict[str, DeploymentMetrics] = {}
        self._models: dict[str, str] = {}
        #: the engine retry count last seen, per runner (a replaced runner starts at 0)
        self._retries_seen: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

    def of(self, deployment: str) -> DeploymentMetrics:
        """The bound children of ``deployment`` (created on first use)."""
        bound = self._bound.get(deployment)
        if bound is None:
            model = self._models.get(deployment, "")
            bound = self._bound[deployment] = DeploymentMetrics(self, deployment, model)
        return bound

    def describe(self, deployment: str, *, model: str, runtime: str) -> None:
        """Record ``deployment``'s model and runtime (the bounded ``model`` label)."""
        bound = self._bound.get(deployment)
        if bound is not None and bound.model != model:
            # rebound with the new model label on next use; the old series goes
            del self._bound[deployment]
            _remove(self.tpot, (deployment, bound.model))
        self._models[deployment] = model
        for labels in list(self.info._metrics):  # a redeploy may change model or runtime
            if labels[0] == deployment:
                self.info.remove(*labels)
        self.info.labels(deployment, model, runtime).set(1)

    def count_retries(self, deployment: str, runner: object, retries: int) -> None:
        """Add what ``runner``'s engine retried since the last look to the counter."""
        seen = self._retries_seen.get(runner, 0)
        delta = retries - seen if retries >= seen else retries
        self._retries_seen[runner] = retries
        if delta:
            self.upstream_retries.labels(deployment).inc(delta)

    def on_render(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` before every :meth:`render` (mirror live state into gauges)."""
        self._refreshers.append(refresh)

    def render(self) -> bytes:
        """The Prometheus text exposition of this cluster's registry."""
        for refresh in self._refreshers:
            refresh()
        return prometheus_client.generate_latest(self._exposed)  # type: ignore[arg-type]

    content_type = prometheus_client.CONTENT_TYPE_LATEST

    def forget(self, deployment: str) -> None:
        """Drop the live gauges of an undeployed deployment (counters stay)."""
        self._bound.pop(deployment, None)
        gauges = (
            self.queue_depth,
            self.in_flight,
            self.breaker_state,
            self.deployment_up,
        )
        for gauge in gauges:
            _remove(gauge, (deployment,))
        for window in ("hour", "day"):
            _remove(self.spend, (deployment, window))
        for labels in list(self.info._metrics):
            if labels[0] == deployment:
                self.info.remove(*labels)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's value (tests and ``status``)."""
        return self.registry.get_sample_value(name, labels or {})


class _WithoutCreated:
    """A registry view whose counters and histograms have no ``_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            kept = [s for s in metric.samples if not s.name.endswith("_created")]
            if len(kept) != len(metric.samples):
                metric.samples = kept
            yield metric


def _remove(metric: Gauge, labels: Iterable[str]) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
