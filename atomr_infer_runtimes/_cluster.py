"""``open_cluster``: the root nursery, its deployments, and the request path.

::

    async with open_cluster(config) as cluster:
        reply = await cluster.complete("chat", messages=[...])
        async with cluster.stream("chat", messages=[...]) as chunks:
            async for chunk in chunks: ...
            chunks.deployment     # which deployment served it

The cluster routes: :meth:`Cluster.candidates` names the deployments a request tries, in
order; the request path itself (:class:`Execution`, attempts on deployments) is in
``_execution`` and ``_attempt``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from atomr_infer_core import (
    Config,
    Deployment,
    ExecuteBatch,
    Message,
    Pipeline,
    PipelineKind,
    Priority,
    RequestKind,
    RuntimePlugin,
    SamplingParams,
    StateBackendKind,
    Tokens,
    TokensBuilder,
)
from atomr_infer_core.config import load_config
from atomr_infer_core.errors import (
    BadRequestError,
    ConfigError,
    DrainingError,
    NotFoundError,
)

from ._cascade import Cascade
from ._deployments import (
    DeploymentRuntime,
    DeploymentState,
    DeploymentStatus,
    breaker_state,
)
from ._execution import Execution
from ._metrics import BREAKER_STATE_VALUES, ClusterMetrics
from ._pipelines import Balancer, MemberView, PipelineStatus
from ._plugins import PluginRegistry
from ._preflight import credential_problems
from ._rotation import RotationResult, rotate_credentials
from ._routing import fallback_chain, resolve_deployment
from ._supervisor import RestartPolicy
from ._telemetry import Telemetry, telemetry_from_config
from ._tenants import Tenants, TenantStatus

__all__ = ["Cluster", "ClusterStatus", "Execution", "open_cluster"]

log = logging.getLogger("atomr_infer.cluster")


@attrs.frozen(kw_only=True)
class ClusterStatus:
    """Health of the whole cluster: ready when every deployment is serving."""

    name: str
    ready: bool
    deployments: tuple[DeploymentStatus, ...]
    #: where limits hold: ``process`` (memory state) or ``fleet`` (shared, redis)
    state_scope: str = "process"
    #: the ``[[key]]`` tenants, with this process's requests and spend
    tenants: tuple[TenantStatus, ...] = ()
    #: the ``[[pipeline]]`` names: cascades and balances
    pipelines: tuple[PipelineStatus, ...] = ()


class Cluster:
    """Deployments under supervision in one nursery; build it with :func:`open_cluster`."""

    def __init__(
        self,
        config: Config,
        *,
        nursery: trio.Nursery,
        registry: PluginRegistry,
        state: Any,
        clock: Callable[[], float],
        restart_policy: RestartPolicy,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        #: OpenTelemetry tracing and GenAI metrics, or None (off: the default)
        self.telemetry = telemetry
        self.metrics = ClusterMetrics()
        self.plugins = registry
        self.state = state
        self.restart_policy = restart_policy
        self._nursery = nursery
        self._clock = clock
        self._deployments: dict[str, DeploymentRuntime] = {}
        self._order: list[str] = []
        self._pipelines: dict[str, Pipeline] = {p.name: p for p in config.pipelines}
        self._balancers = {
            p.name: Balancer(p) for p in config.pipelines if p.kind is PipelineKind.BALANCE
        }
        self.metrics.on_render(self._refresh_gauges)
        #: the ``[[key]]`` tenants: models, limits, budgets, queue weights
        self.tenants = Tenants(
            config.keys,
            state=state,
            metrics=self.metrics,
            clock=clock,
            route=self.route,
            price_of=self._price_of,
        )

    # -- routing -------------------------------------------------------------------

    def route(self, model: str) -> str:
        """The deployment or pipeline ``model`` names (a deployment name, a pipeline name,
        or a model one deployment serves). Raises NotFoundError for none."""
        if model in self._pipelines:
            return model
        return resolve_deployment(
            model, {name: rt.deployment.model for name, rt in self._deployments.items()}
        )

    def candidates(self, model: str) -> list[str]:
        """The deployments a request for ``model`` tries, in order: the deployment and its
        fallbacks; for a balance pipeline its usable members best first (the strategy's
        pick leads), their fallbacks, then the members it cannot use now (open circuit,
        not serving, out of requests by their rate limits), so that their error is the
        one reported when nothing else served. Raises NotFoundError for an unknown name
        and BadRequestError for a cascade (``execute`` runs those step by step)."""
        pipeline = self._pipelines.get(model)
        fallbacks = self._fallbacks()
        if pipeline is None:
            return fallback_chain(self.route(model), fallbacks)
        if pipeline.kind is PipelineKind.CASCADE:
            raise BadRequestError(
                f"{model!r} is a cascade pipeline; run it with Cluster.execute", param="model"
            )
        views = self._member_views(pipeline)
        if not views:
            raise NotFoundError(
                f"none of the members of pipeline {model!r} is deployed "
                f"({', '.join(pipeline.members)})",
                model=model,
            )
        ranked, unusable = self._balancers[model].order(views, trio.current_time())
        chain: list[str] = []
        for name in ranked:
            chain.append(name)
        for name in ranked:
            chain += [fb for fb in fallback_chain(name, fallbacks) if fb not in chain]
        chain += [name for name in unusable if name not in chain]
        self.metrics.balance_picks.labels(model, chain[0]).inc()
        return [name for name in chain if name in self._deployments]

    def observe(self, deployment: str, *, latency_s: float, ok: bool) -> None:
        """One finished attempt on ``deployment`` (its time to first byte, or to failing):
        feeds the latency averages of the balances it is a member of."""
        now = trio.current_time()
        for balancer in self._balancers.values():
            if deployment in balancer.weights:
                balancer.observe(deployment, latency_s=latency_s, ok=ok, now=now)

    def _member_views(self, pipeline: Pipeline) -> list[MemberView]:
        views = []
        for name in pipeline.members:
            runtime = self._deployments.get(name)
            if runtime is not None:
                views.append(
                    MemberView(
                        name=name,
                        usable=_usable(runtime),
                        outstanding=runtime.outstanding + runtime.admission.capacity.queued,
                    )
                )
        return views

    def pipeline_statuses(self) -> tuple[PipelineStatus, ...]:
        """Each pipeline's shape and, for a balance, its members' live state."""
        out = []
        now = trio.current_time()
        for name, pipeline in self._pipelines.items():
            if pipeline.kind is PipelineKind.CASCADE:
                out.append(PipelineStatus(name=name, kind="cascade", steps=pipeline.steps))
            else:
                views = self._member_views(pipeline)
                out.append(self._balancers[name].status(views, now))
        return tuple(out)

    def find_runtime(self, name: str) -> DeploymentRuntime | None:
        """The live deployment ``name``, or ``None`` (undeployed meanwhile)."""
        return self._deployments.get(name)

    def _price_of(self, model: str) -> Any:
        """The price a request for ``model`` is reserved at: its first deployment's."""
        runtime = self._deployments.get(self.route(model))
        return None if runtime is None else runtime.price

    def _fallbacks(self) -> Mapping[str, Sequence[str]]:
        return {name: rt.deployment.fallbacks for name, rt in self._deployments.items()}

    def breaker(self, name: str) -> Any:
        """The circuit breaker of deployment ``name`` (operators: ``force_open``)."""
        return self._deployments[name].breaker

    def limiter(self, name: str) -> Any:
        return self._deployments[name].limiter

    def runtime(self, name: str) -> DeploymentRuntime:
        """The live deployment (replicas, admission, budget) — for health and tests."""
        return self._deployments[name]

    async def rotate_credentials(self, name: str | None = None) -> list[RotationResult]:
        """Rebuild the runner sessions of deployment ``name`` (all when ``None``) so they
        fetch their credentials again; in-flight requests finish on their old session.

        Raises NotFoundError for an unknown ``name``; a failed rebuild is reported in
        its :class:`RotationResult` and leaves the old session serving.
        """
        return await rotate_credentials(self._deployments, self._order, name)

    # -- requests ------------------------------------------------------------------

    def execute(self, batch: ExecuteBatch) -> Execution | Cascade:
        """Route and run ``batch``; ``async with`` the result to get its chunks (a
        :class:`Cascade` for a cascade pipeline's name, with the same surface)."""
        pipeline = self._pipelines.get(batch.model)
        if pipeline is not None and pipeline.kind is PipelineKind.CASCADE:
            return Cascade(self, batch, pipeline)
        return Execution(self, batch)

    def _batch(
        self,
        model: str,
        kind: RequestKind,
        *,
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        prompt: str | None = None,
        inputs: Sequence[str] | None = None,
        request_id: str | None = None,
        priority: Priority = Priority.NORMAL,
        timeout: float | None = None,
        stream: bool = False,
        dimensions: int | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> ExecuteBatch:
        if kind is not RequestKind.EMBEDDING:
            if (messages is None) == (prompt is None):
                raise BadRequestError("pass exactly one of messages= or prompt=", param="messages")
            kind = RequestKind.CHAT if messages is not None else RequestKind.COMPLETION
        built = None
        if messages is not None:
            built = tuple(m if isinstance(m, Message) else Message(**m) for m in messages)
        try:
            params = SamplingParams(**(sampling or {}))
        except (TypeError, ValueError) as exc:
            raise BadRequestError(f"invalid sampling parameters: {exc}") from None
        return ExecuteBatch(
            request_id=request_id or f"req-{uuid.uuid4().hex}",
            model=model,
            kind=kind,
            messages=built,
            prompt=prompt,
            inputs=tuple(inputs) if inputs is not None else None,
            sampling=params,
            stream=stream,
            priority=priority,
            deadline=None if timeout is None else trio.current_time() + timeout,
            dimensions=dimensions,
        )

    async def complete(
        self,
        model: str,
        *,
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        prompt: str | None = None,
        request_id: str | None = None,
        priority: Priority = Priority.NORMAL,
        timeout: float | None = None,
        **sampling: Any,
    ) -> Tokens:
        """The whole answer. ``timeout`` bounds the wait for the first token.

        ``Tokens.deployment`` names the deployment that served it; ``cost_usd`` is its
        cost from the runtime's price table (``None`` when unpriced).
        """
        batch = self._batch(
            model,
            RequestKind.CHAT,
            messages=messages,
            prompt=prompt,
            request_id=request_id,
            priority=priority,
            timeout=timeout,
            sampling=sampling,
        )
        return await self._collect(batch)

    async def _collect(self, batch: ExecuteBatch) -> Tokens:
        handle = self.execute(batch)
        builder = TokensBuilder(request_id=batch.request_id)
        async with handle as chunks:
            async for chunk in chunks:
                builder.add(chunk)
        return builder.build(deployment=handle.deployment, cost_usd=handle.cost_usd)

    def stream(
        self,
        model: str,
        *,
        messages: Sequence[Message | Mapping[str, Any]] | None = None,
        prompt: str | None = None,
        request_id: str | None = None,
        priority: Priority = Priority.NORMAL,
        timeout: float | None = None,
        **sampling: Any,
    ) -> Execution:
        """``async with cluster.stream(...) as chunks: async for chunk in chunks``.

        ``chunks.deployment`` names the deployment serving it.
        """
        batch = self._batch(
            model,
            RequestKind.CHAT,
            messages=messages,
            prompt=prompt,
            request_id=request_id,
            priority=priority,
            timeout=timeout,
            stream=True,
            sampling=sampling,
        )
        return self.execute(batch)

    async def embed(
        self,
        model: str,
        inputs: Sequence[str],
        *,
        dimensions: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Tokens:
        """Embeddings of ``inputs`` (``Tokens.embeddings``, in input order)."""
        if isinstance(inputs, str):
            inputs = [inputs]
        batch = self._batch(
            model,
            RequestKind.EMBEDDING,
            inputs=inputs,
            dimensions=dimensions,
            request_id=request_id,
            timeout=timeout,
        )
        return await self._collect(batch)

    # -- deployments -----------------------------------------------------------------

    def _prepare(self, deployment: Deployment, path: str) -> tuple[RuntimePlugin, Any]:
        problems = [(f"{path}.{p}", m) for p, m in deployment.problems()]
        if problems:
            raise ConfigError(problems)
        plugin = self.plugins.runtime_for(deployment, path=path)
        config = plugin.structure_config(deployment.runtime_config, path=f"{path}.runtime_config")
        problems = credential_problems(config, path)
        if problems:
            raise ConfigError(problems)
        return plugin, config

    async def deploy(self, deployment: Deployment, *, _path: str | None = None) -> DeploymentStatus:
        """Start ``deployment`` (hot); replaces a running one of the same name.

        Returns once its replicas started (state ``serving``), or it failed (state
        ``failed`` with the reason). A replaced deployment drains in the background; a
        replacement that fails to start is dropped and the running one keeps serving.

        Raises:
            RuntimeNotInstalledError: its runtime's plugin is not installed.
            ConfigError: the deployment or its ``runtime_config`` is invalid.
        """
        path = _path or f"deployment[{deployment.name!r}]"
        plugin, runtime_config = self._prepare(deployment, path)
        runtime = DeploymentRuntime(
            deployment,
            plugin,
            runtime_config,
            state_backend=self.state,
            limiter=_limiter(self.state, deployment),
            breaker=_breaker(self.state, deployment, plugin),
            metrics=self.metrics,
            policy=self.restart_policy,
            clock=self._clock,
            observer=None if self.telemetry is None else self.telemetry.observer(str(plugin.name)),
        )
        runtime.admission.weight_of = self.tenants.weight
        await self._nursery.start(runtime.run)
        old = self._deployments.get(deployment.name)
        if old is not None and runtime.state is DeploymentState.FAILED:
            log.error(
                "deployment %s: the replacement failed (%s); the running one keeps serving",
                deployment.name,
                runtime.reason,
            )
            return runtime.status()
        self._deployments[deployment.name] = runtime
        self.metrics.describe(deployment.name, model=deployment.model, runtime=str(plugin.name))
        if deployment.name not in self._order:
            self._order.append(deployment.name)
        if old is not None:
            self._nursery.start_soon(self._retire, old, True)
        log.info("deployment %s: %s", deployment.name, runtime.state.value)
        return runtime.status()

    async def undeploy(self, name: str, *, drain: bool = True) -> None:
        """Stop deployment ``name``: no new requests; in-flight ones finish first when
        ``drain`` (up to ``cluster.shutdown_grace``), else they fail with DrainingError."""
        runtime = self._deployments.pop(name, None)
        if runtime is None:
            raise NotFoundError(f"no deployment named {name!r}", model=name)
        self._order.remove(name)
        await self._retire(runtime, drain)
        self.metrics.forget(name)

    async def _retire(self, runtime: DeploymentRuntime, drain: bool) -> None:
        runtime.start_draining()
        if drain:
            with trio.move_on_after(self.config.cluster.shutdown_grace):
                while runtime.attempts:
                    await runtime.wait_changed()
        runtime.abort_all(DrainingError(f"deployment {runtime.name!r} was undeployed"))
        runtime.stop()

    # -- health ------------------------------------------------------------------------

    def list(self) -> list[DeploymentStatus]:
        return [self._deployments[name].status() for name in self._order]

    def status(self) -> ClusterStatus:
        deployments = tuple(self.list())
        return ClusterStatus(
            name=self.config.cluster.name,
            ready=all(d.state == DeploymentState.SERVING.value for d in deployments),
            deployments=deployments,
            state_scope=getattr(self.state, "scope", "process"),
            tenants=self.tenants.status(),
            pipelines=self.pipeline_statuses(),
        )

    def _refresh_gauges(self) -> None:
        stats = getattr(self.state, "stats", None)
        if stats is not None:
            self.metrics.state_available.set(1.0 if stats.available else 0.0)
            counted = self.metrics.sample("atomr_state_unavailable_calls_total") or 0.0
            if stats.unavailable > counted:
                self.metrics.state_unavailable.inc(stats.unavailable - counted)
        for name, runtime in self._deployments.items():
            status = runtime.status()
            self.metrics.breaker_state.labels(name).set(
                BREAKER_STATE_VALUES.get(status.breaker, 0.0)
            )
            self.metrics.in_flight.labels(name).set(runtime.outstanding)
            self.metrics.queue_depth.labels(name).set(runtime.admission.capacity.queued)
            for runner, retries in _engine_retries(runtime):
                self.metrics.count_retries(name, runner, retries)


def _usable(runtime: DeploymentRuntime) -> bool:
    """Whether a balance may send a request to ``runtime`` now: serving, its breaker not
    open, and not paused or out of requests by its rate limits."""
    if runtime.state is not DeploymentState.SERVING:
        return False
    if breaker_state(runtime.breaker) == "open":
        return False
    stats = getattr(runtime.limiter, "statistics", None)
    now = stats() if callable(stats) else None
    if (getattr(now, "paused_for_s", 0.0) or 0.0) > 0:
        return False
    available = getattr(now, "requests_available", None)
    return available is None or available >= 1


def _engine_retries(runtime: DeploymentRuntime) -> list[tuple[object, int]]:
    """(runner, retries so far) of each replica whose runner has a remote engine."""
    counts = [
        (replica.runner, getattr(stats(), "retries", None))
        for replica in runtime.replicas
        if callable(stats := getattr(replica.runner, "statistics", None))
    ]
    return [(runner, c) for runner, c in counts if isinstance(c, int)]


def _limiter(state: Any, deployment: Deployment) -> Any:
    # The key carries the limits: a redeploy with new limits gets a fresh limiter, one
    # with the same limits keeps the running windows (and shares them across processes).
    lim = deployment.rate_limits
    spec = (
        f"{lim.requests_per_minute}/{lim.tokens_per_minute}/{lim.concurrent_requests}/{lim.strict}"
    )
    return state.limiter(f"limits:{deployment.name}:{spec}", lim, name=deployment.name)


def _breaker(state: Any, deployment: Deployment, plugin: RuntimePlugin) -> Any:
    cb = deployment.circuit_breaker
    spec = f"{cb.failure_threshold}/{cb.open_duration:g}/{cb.half_open_max_probes}"
    return state.breaker(
        f"breaker:{deployment.name}:{spec}",
        deployment.circuit_breaker,
        provider=str(plugin.name),
        name=deployment.name,
    )


def _coerce_config(config: Config | str | os.PathLike[str] | Sequence[Deployment]) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, str | os.PathLike):
        return load_config(config)
    deployments = tuple(config)
    for dep in deployments:
        if not isinstance(dep, Deployment):
            raise TypeError(
                "open_cluster takes a Config, a path to a TOML file, or a sequence of "
                f"Deployment values (got a {type(dep).__name__} in the sequence)"
            )
    return Config(deployments=deployments)


def _default_clock(config: Config) -> Callable[[], float]:
    # Spend shared through Redis, or kept in a ledger across restarts, needs a clock
    # every process (and the next one) agrees on.
    if config.state.backend is StateBackendKind.REDIS or config.state.spend_ledger:
        return time.time
    return trio.current_time


@contextlib.asynccontextmanager
async def open_cluster(
    config: Config | str | os.PathLike[str] | Sequence[Deployment],
    *,
    plugins: Sequence[RuntimePlugin | object] = (),
    load_entry_points: bool = True,
    clock: Callable[[], float] | None = None,
    restart_policy: RestartPolicy | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[Cluster]:
    """Start every deployment of ``config`` under one nursery; stop them all on exit.

    Args:
        config: a Config, a TOML path, or a sequence of Deployment values.
        plugins: RuntimePlugin values or plugin modules registered in code (they win
            over entry points of the same runtime).
        load_entry_points: load installed plugins (``ATOMR_INFER_LOAD_PLUGINS`` limits
            which).
        clock: time base of budget windows (default trio's clock; wall time with Redis).
        restart_policy: replica restart backoff and intensity (default 3 in 60 s).
        telemetry: OpenTelemetry tracing and metrics to use (tests: in-memory exporters);
            by default one is built from ``[telemetry]`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
            when either names an endpoint, and flushed on exit.

    Raises:
        RuntimeNotInstalledError / ConfigError before anything starts, naming every
        deployment whose runtime is missing or whose ``runtime_config`` is invalid.
    """
    registry = PluginRegistry()
    try:
        if load_entry_points:
            registry.load_entry_points()
        for plugin in plugins:
            registry.add(plugin)
        # after the plugins: their model patterns steer runtime inference in a TOML file
        cfg = _coerce_config(config)
        _check_all(cfg, registry)
        owned = telemetry is None
        if owned:
            telemetry = telemetry_from_config(cfg.telemetry)
        try:
            async with _open_state(cfg) as state, trio.open_nursery() as nursery:
                cluster = Cluster(
                    cfg,
                    nursery=nursery,
                    registry=registry,
                    state=state,
                    clock=clock or _default_clock(cfg),
                    restart_policy=restart_policy or RestartPolicy(),
                    telemetry=telemetry,
                )
                for index, deployment in enumerate(cfg.deployments):
                    await cluster.deploy(deployment, _path=f"deployment[{index}]")
                try:
                    yield cluster
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if owned and telemetry is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(telemetry.shutdown)
    finally:
        registry.close()


def _check_all(config: Config, registry: PluginRegistry) -> None:
    """Every deployment's runtime is installed, its runtime_config valid and its
    credential at hand; else raise the one error, or a ConfigError listing all of them."""
    errors: list[ConfigError] = []
    for index, deployment in enumerate(config.deployments):
        path = f"deployment[{index}]"
        try:
            plugin = registry.runtime_for(deployment, path=path)
            runtime_config = plugin.structure_config(
                deployment.runtime_config, path=f"{path}.runtime_config"
            )
        except ConfigError as exc:
            errors.append(exc)
            continue
        problems = credential_problems(runtime_config, path)
        if problems:
            errors.append(ConfigError(problems))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigError([p for exc in errors for p in exc.problems])


@contextlib.asynccontextmanager
async def _open_state(config: Config) -> AsyncIterator[Any]:
    from atomr_infer_remote import open_state_backend

    async with open_state_backend(config.state) as state:
        yield state
