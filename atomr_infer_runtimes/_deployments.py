"""One deployment at run time: its replicas under a supervisor, its state and admission.

States: ``pending`` (replicas starting) → ``serving`` → ``draining`` (undeploy: no new
requests, in-flight ones finish) → gone; or ``failed`` (a replica exceeded its restart
intensity, or the runner could not be built), with a reason.

Replica life: ``starting`` → ``serving``; a crash marks it ``down``: its in-flight
requests fail with SessionPoisonedError (the cluster re-routes those that streamed
nothing to a sibling), ``rebuild_session(REPLICA_RESTART)`` runs after the backoff, and
the replica rejoins routing once ``run()`` reports started again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    ModelRunner,
    RateLimits,
    ReplicaRouting,
    RunnerContext,
    RuntimePlugin,
    SessionRebuildCause,
    StepModel,
)
from atomr_infer_core.errors import (
    DeploymentFailedError,
    DrainingError,
    InferenceError,
    SessionPoisonedError,
)

from ._admission import Admission
from ._attempt import Attempt
from ._budget import BudgetGuard
from ._hedging import TtftWindow, hedge_delay
from ._metrics import ClusterMetrics
from ._routing import PrefixOwners, cache_aware, least_outstanding, prefix_keys
from ._supervisor import ChildState, RestartPolicy, SupervisedChild, Supervisor, describe_crash

__all__ = [
    "DeploymentRuntime",
    "DeploymentState",
    "DeploymentStatus",
    "ReplicaSlot",
    "ReplicaState",
    "ReplicaStatus",
]

log = logging.getLogger("atomr_infer.deployments")


class DeploymentState(str, enum.Enum):
    PENDING = "pending"
    SERVING = "serving"
    DRAINING = "draining"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class ReplicaState(str, enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DOWN = "down"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class ReplicaStatus:
    index: int
    state: str
    outstanding: int
    restarts: int


@attrs.frozen(kw_only=True)
class DeploymentStatus:
    """What ``Cluster.list()`` reports for one deployment."""

    name: str
    model: str
    runtime: str
    state: str
    reason: str | None
    replicas: tuple[ReplicaStatus, ...]
    breaker: str
    spend_hour_usd: float
    spend_day_usd: float


class InFlight(Protocol):
    """A request attempt running on a replica (the cluster's attempt object)."""

    def abort(self, error: InferenceError) -> None: ...


@attrs.define(eq=False)
class ReplicaSlot:
    index: int
    runner: ModelRunner
    state: ReplicaState = ReplicaState.STARTING
    outstanding: int = 0
    restarts: int = 0
    child: SupervisedChild | None = None
    inflight: set[Any] = attrs.Factory(set)
    #: attempts the runner failed itself (SessionPoisonedError) since its last answer
    #: or crash: what a crash log adds to the attempts still in flight
    crash_casualties: int = 0


def build_runner(
    plugin: RuntimePlugin, deployment: Deployment, config: Any, context: RunnerContext
) -> ModelRunner:
    """``plugin.create``, wrapping a StepModel in the local batching engine."""
    made = plugin.create(deployment, config, context)
    if isinstance(made, StepModel) and not hasattr(made, "execute"):
        from ._batching import LocalEngineRunner

        return LocalEngineRunner(made, deployment)
    return made


class DeploymentRuntime:
    """A deployment's replicas, supervisor, admission and live state.

    ``run`` is started in the cluster's nursery; cancelling :attr:`cancel_scope`
    stops every replica.
    """

    def __init__(
        self,
        deployment: Deployment,
        plugin: RuntimePlugin,
        runtime_config: Any,
        *,
        state_backend: Any,
        limiter: Any,
        breaker: Any,
        metrics: ClusterMetrics,
        policy: RestartPolicy,
        clock: Callable[[], float],
        observer: Any = None,
    ) -> None:
        self.deployment = deployment
        #: the remote engines' AttemptObserver (tracing), or None
        self.observer = observer
        self.name = deployment.name
        self.plugin = plugin
        self.runtime_config = runtime_config
        self.state_backend = state_backend
        self.limiter = limiter
        self.breaker = breaker
        self.metrics = metrics
        self.policy = policy
        self.state = DeploymentState.PENDING
        self.reason: str | None = None
        self.replicas: list[ReplicaSlot] = []
        #: request attempts on this deployment, queued or dispatched (drain waits for them)
        self.attempts: set[Any] = set()
        self.cancel_scope = trio.CancelScope()
        self._changed = trio.Event()
        self._last_pick = -1
        #: who holds which prompt prefix (``cache_aware`` routing with several replicas);
        #: ``auto`` decides at the first pick, from whether the runner caches prefixes
        self.prefix_owners: PrefixOwners | None = None
        self._routing_decided = deployment.replicas == 1
        if deployment.replicas > 1 and deployment.serving.routing is not ReplicaRouting.AUTO:
            self._routing_decided = True
            if deployment.serving.routing is ReplicaRouting.CACHE_AWARE:
                self.prefix_owners = PrefixOwners()
        #: times from an attempt's start to its first chunk (``hedge_after = "p95"``)
        self.ttft = TtftWindow()
        price = plugin.prices.lookup(deployment.model)
        self.price = price
        self.budget = BudgetGuard(deployment, price, state_backend, metrics, clock)
        self.admission = Admission(
            deployment,
            budget=self.budget,
            limiter=limiter,
            metrics=metrics,
            serving_replicas=self.serving_count,
            fleet_capacity=_fleet_capacity(state_backend, deployment),
        )

    # -- state --------------------------------------------------------------------

    def notify(self) -> None:
        self.admission.refresh_capacity()
        self.metrics.deployment_up.labels(self.name).set(
            1.0 if self.state is DeploymentState.SERVING else 0.0
        )
        self.metrics.of(self.name).in_flight.set(self.outstanding)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def serving_count(self) -> int:
        if self.state is DeploymentState.FAILED:
            return 0
        return sum(1 for r in self.replicas if r.state is ReplicaState.SERVING)

    @property
    def outstanding(self) -> int:
        return sum(r.outstanding for r in self.replicas)

    def pick_replica(
        self, batch: ExecuteBatch | None = None, *, avoid: int | None = None
    ) -> ReplicaSlot | None:
        """The serving replica for ``batch``: with ``cache_aware`` routing the one that
        served its longest prompt prefix unless its load diverges, else the one with the
        fewest outstanding requests (ties round-robin). Replica ``avoid`` is picked only
        when no other serves."""
        serving = [
            (r.index, r.outstanding) for r in self.replicas if r.state is ReplicaState.SERVING
        ]
        if avoid is not None and len(serving) > 1:
            serving = [s for s in serving if s[0] != avoid]
        if not self._routing_decided and serving:
            self._routing_decided = True
            if getattr(self.replicas[serving[0][0]].runner, "prefix_cache", False):
                self.prefix_owners = PrefixOwners()
        if self.prefix_owners is None or batch is None:
            idx = least_outstanding(serving, after=self._last_pick)
        else:
            keys = prefix_keys(batch)
            idx = cache_aware(serving, keys, self.prefix_owners, after=self._last_pick)
            if idx is not None:
                self.prefix_owners.record(keys, idx)
        if idx is None:
            return None
        self._last_pick = idx
        return self.replicas[idx]

    # -- the request path: what an Attempt asks of its deployment ------------------

    def attempt(
        self,
        batch: ExecuteBatch,
        *,
        deadline: float,
        trace: Any = None,
        position: int = 0,
        avoid: int | None = None,
        arrival: float | None = None,
        log: Any = None,
        observer: Any = None,
    ) -> Attempt:
        """One try of ``batch`` here (``async with`` it; see :mod:`._attempt`)."""
        return Attempt(
            self,
            batch,
            deadline=deadline,
            trace=trace,
            position=position,
            avoid=avoid,
            arrival=arrival,
            log=log,
            observer=observer,
        )

    async def wait_serving(self) -> None:
        """Return once the deployment serves; raise when it failed or drains."""
        while self.state is DeploymentState.PENDING:
            await self.wait_changed()
        if self.state is DeploymentState.FAILED:
            raise DeploymentFailedError(
                f"deployment {self.name!r} has failed ({self.reason}); fix it and deploy it again"
            )
        if self.state is DeploymentState.DRAINING:
            raise DrainingError(f"deployment {self.name!r} is being undeployed")

    def check_breaker(self) -> None:
        """An open breaker fails the attempt before it takes any permit (CircuitOpenError
        with truthful timestamps); half-open probes are the engine's to take."""
        breaker = self.breaker
        if breaker is not None and breaker.state == "open":
            breaker.check()

    async def wait_replica(self, batch: ExecuteBatch, *, avoid: int | None = None) -> ReplicaSlot:
        """The replica to run ``batch`` on, waiting while none serves."""
        while True:
            if self.state is not DeploymentState.SERVING:
                await self.wait_serving()
            replica = self.pick_replica(batch, avoid=avoid)
            if replica is not None:
                return replica
            await self.wait_changed()

    def attempt_started(self, attempt: Any) -> None:
        self.attempts.add(attempt)

    def attempt_done(self, attempt: Any) -> None:
        self.attempts.discard(attempt)
        if self.state is DeploymentState.DRAINING and not self.attempts:
            self.notify()

    def observe_first_chunk(self, seconds: float) -> None:
        """An attempt here got its first chunk ``seconds`` after it started."""
        self.ttft.add(seconds)

    def hedge_delay(self) -> float | None:
        """How long a request waits for a first chunk here before it is hedged (``None``:
        never; with ``hedge_after = "p95"`` also while too few first chunks were seen)."""
        return hedge_delay(self.deployment.hedge_after, self.ttft)

    @property
    def supports_prefill(self) -> bool:
        """The runner continues a trailing assistant message (``prefill`` capability)."""
        return bool(self.replicas) and bool(getattr(self.replicas[0].runner, "prefill", False))

    def count_consumed(self, usage: Any, cost: float | None) -> None:
        """An attempt's reported tokens and its charged cost, in the metrics."""
        bound = self.metrics.of(self.name)
        if usage is not None:
            bound.tokens_in.inc(usage.input_tokens)
            bound.tokens_out.inc(usage.output_tokens)
        if cost:
            bound.cost.inc(cost)

    def dispatched(self, replica: ReplicaSlot, attempt: Any) -> None:
        replica.outstanding += 1
        replica.inflight.add(attempt)
        self.metrics.of(self.name).in_flight.set(self.outstanding)

    def finished(
        self, replica: ReplicaSlot, attempt: Any, error: BaseException | None = None
    ) -> None:
        """An attempt left ``replica`` (``error``: what it ended with, if it failed)."""
        if error is None:
            replica.crash_casualties = 0  # the session answered: earlier failures are past
        elif isinstance(error, SessionPoisonedError) and not getattr(
            attempt, "crash_counted", False
        ):
            replica.crash_casualties += 1
        replica.outstanding -= 1
        replica.inflight.discard(attempt)
        self.metrics.of(self.name).in_flight.set(self.outstanding)
        if self.state is DeploymentState.DRAINING and self.outstanding == 0:
            self.notify()

    def status(self) -> DeploymentStatus:
        return DeploymentStatus(
            name=self.name,
            model=self.deployment.model,
            runtime=str(self.plugin.name),
            state=self.state.value,
            reason=self.reason,
            replicas=tuple(
                ReplicaStatus(
                    index=r.index,
                    state=r.state.value,
                    outstanding=r.outstanding,
                    restarts=r.restarts,
                )
                for r in self.replicas
            ),
            breaker=breaker_state(self.breaker),
            spend_hour_usd=self.budget.spend["hour"],
            spend_day_usd=self.budget.spend["day"],
        )

    # -- life ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every replica, report started, and supervise them until cancelled.

        Reports started also when the deployment failed while starting (its state then
        says ``failed`` with the reason)."""
        started = False
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                supervisor = Supervisor(
                    f"deployment {self.name!r}", nursery, self.policy, on_escalate=self._escalate
                )
                try:
                    self._build_replicas()
                except Exception as exc:  # the plugin's factory failed: a config problem
                    self._fail(f"could not create the runner: {type(exc).__name__}: {exc}")
                else:
                    for replica in self.replicas:
                        await self._start_replica(supervisor, replica)
                    if self.state is DeploymentState.PENDING:
                        self.state = DeploymentState.SERVING
                        self.notify()
                    started = True
                    task_status.started()
                    await trio.sleep_forever()
        for replica in self.replicas:
            if replica.state is not ReplicaState.FAILED:
                replica.state = ReplicaState.STOPPED
        self.notify()
        if not started:
            task_status.started()

    def _build_replicas(self) -> None:
        services = {"limiter": self.limiter, "breaker": self.breaker, "metrics": self.metrics}
        if self.observer is not None:
            services["observer"] = self.observer
        for index in range(self.deployment.replicas):
            context = RunnerContext(
                replica_index=index, state=self.state_backend, services=services
            )
            runner = build_runner(self.plugin, self.deployment, self.runtime_config, context)
            self.replicas.append(ReplicaSlot(index=index, runner=runner))

    async def _start_replica(self, supervisor: Supervisor, replica: ReplicaSlot) -> None:
        def on_running(_child: SupervisedChild) -> None:
            replica.state = ReplicaState.SERVING
            log.info("deployment %s: replica %d serving", self.name, replica.index)
            self.notify()

        def on_crash(child: SupervisedChild, error: BaseException) -> None:
            replica.state = ReplicaState.DOWN
            if self.prefix_owners is not None:
                self.prefix_owners.forget(replica.index)
            replica.restarts = child.restarts
            self.metrics.restarts.labels(self.name).inc()
            cause = describe_crash(error)
            # the runner may have failed its requests itself while it unwound (those
            # attempts already left); the rest are failed here
            failed = replica.crash_casualties + len(replica.inflight)
            replica.crash_casualties = 0
            for attempt in replica.inflight:
                attempt.crash_counted = True
            log.warning(
                "deployment %s: replica %d crashed (%s); %d in-flight requests failed",
                self.name,
                replica.index,
                cause,
                failed,
            )
            self._abort_inflight(
                replica,
                SessionPoisonedError(
                    f"replica {replica.index} of deployment {self.name!r} crashed "
                    f"({cause}); it restarts with backoff"
                ),
            )
            self.notify()

        async def before_restart(child: SupervisedChild) -> None:
            replica.restarts = child.restarts
            await replica.runner.rebuild_session(SessionRebuildCause.REPLICA_RESTART)

        replica.child = await supervisor.start_child(
            f"replica-{replica.index}",
            replica.runner.run,
            on_crash=on_crash,
            before_restart=before_restart,
            on_running=on_running,
        )
        if replica.child.state is ChildState.FAILED:
            replica.state = ReplicaState.FAILED

    def _abort_inflight(self, replica: ReplicaSlot, error: InferenceError) -> None:
        for attempt in list(replica.inflight):
            attempt.abort(error)

    def _escalate(self, child: SupervisedChild, error: BaseException) -> None:
        for replica in self.replicas:
            if replica.child is child or f"replica-{replica.index}" == child.name:
                replica.state = ReplicaState.FAILED
                replica.restarts = child.restarts
        self._fail(
            f"{child.name} exceeded its restart intensity ({self.policy.max_restarts} restarts "
            f"within {self.policy.period:g}s); last error: {describe_crash(error)}"
        )

    def _fail(self, reason: str) -> None:
        """Escalation: the deployment stops serving; in-flight requests fail typed."""
        self.state = DeploymentState.FAILED
        self.reason = reason
        log.error("deployment %s failed: %s", self.name, reason)
        self.abort_all(SessionPoisonedError(f"deployment {self.name!r} failed: {reason}"))
        self.notify()
        self.cancel_scope.cancel()

    def start_draining(self) -> None:
        if self.state is not DeploymentState.FAILED:
            self.state = DeploymentState.DRAINING
            self.reason = "undeploying: finishing in-flight requests"
        self.notify()

    def abort_all(self, error: InferenceError) -> None:
        for attempt in list(self.attempts):
            attempt.abort(error)

    def stop(self) -> None:
        self.cancel_scope.cancel()


def _fleet_capacity(state_backend: Any, deployment: Deployment) -> Any:
    """``max_concurrent`` slots shared by every process, when the backend is shared."""
    if getattr(state_backend, "scope", "process") != "fleet":
        return None
    cap = deployment.serving.max_concurrent
    return state_backend.limiter(
        f"capacity:{deployment.name}:{cap}",
        RateLimits(concurrent_requests=cap),
        name=deployment.name,
    )


def breaker_state(breaker: Any) -> str:
    """``closed`` | ``open`` | ``half_open`` of a breaker (``closed`` when none)."""
    if breaker is None:
        return "closed"
    state = getattr(breaker, "state", None)
    if callable(state):
        state = state()
    if state is None:
        return "closed"
    value = getattr(state, "value", state)
    return str(value).lower().replace("-", "_")
