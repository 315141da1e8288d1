"""Prometheus metrics of one cluster, in a registry of its own (two clusters never mix)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BREAKER_STATE_VALUES", "ClusterMetrics", "DeploymentMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60)

#: gauge values of ``atomr_breaker_state``
BREAKER_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class DeploymentMetrics:
    """One deployment's metric children, bound once (``labels()`` is costly per call)."""

    def __init__(self, m: ClusterMetrics, name: str) -> None:
        self.ok = m.requests.labels(name, "ok", "")
        self.ttft = m.ttft.labels(name)
        self.latency = m.latency.labels(name)
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
        self.upstream_retries = Gauge(
            "atomr_upstream_retries",
            "Retries the remote engine made, summed over the deployment's replicas "
            "since the deployment started.",
            ["deployment"],
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
        self.state_available.set(1.0)
        self._refreshers: list[Callable[[], None]] = []
        self._bound: dict[str, DeploymentMetrics] = {}

    def of(self, deployment: str) -> DeploymentMetrics:
        """The bound children of ``deployment`` (created on first use)."""
        bound = self._bound.get(deployment)
        if bound is None:
            bound = self._bound[deployment] = DeploymentMetrics(self, deployment)
        return bound

    def on_render(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` before every :meth:`render` (mirror live state into gauges)."""
        self._refreshers.append(refresh)

    def render(self) -> bytes:
        """The Prometheus text exposition of this cluster's registry."""
        for refresh in self._refreshers:
            refresh()
        return prometheus_client.generate_latest(self.registry)

    content_type = prometheus_client.CONTENT_TYPE_LATEST

    def forget(self, deployment: str) -> None:
        """Drop the live gauges of an undeployed deployment (counters stay)."""
        self._bound.pop(deployment, None)
        gauges = (
            self.queue_depth,
            self.in_flight,
            self.breaker_state,
            self.deployment_up,
            self.upstream_retries,
        )
        for gauge in gauges:
            _remove(gauge, (deployment,))
        for window in ("hour", "day"):
            _remove(self.spend, (deployment, window))

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's value (tests and ``status``)."""
        return self.registry.get_sample_value(name, labels or {})


def _remove(metric: Gauge, labels: Iterable[str]) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
