"""``open_cluster``: the root nursery, its deployments, and the request path.

::

    async with open_cluster(config) as cluster:
        reply = await cluster.complete("chat", messages=[...])
        async with cluster.stream("chat", messages=[...]) as chunks:
            async for chunk in chunks: ...
            chunks.deployment     # which deployment served it

Request path (in the caller's task): resolve the model to a deployment ▸ for it and then
each of its ``fallbacks``: admission (budget ▸ rate limit ▸ capacity) ▸ least-outstanding
replica ▸ ``runner.execute``. Everything up to the first chunk runs under the request's
deadline (``batch.deadline``, else arrival + ``timeouts.request_timeout``). A failure
before the first chunk moves on to a sibling replica (crash) or the next fallback;
after output began, the error goes to the caller.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
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
    TokenChunk,
    Tokens,
    TokensBuilder,
    TokenUsage,
)
from atomr_infer_core.config import load_config
from atomr_infer_core.errors import (
    BadRequestError,
    ConfigError,
    ContentFilteredError,
    ContextLengthExceededError,
    DeploymentFailedError,
    DrainingError,
    InferenceError,
    InternalError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    SessionPoisonedError,
)

from ._admission import Ticket
from ._cascade import Cascade
from ._content import text_problem
from ._deployments import (
    DeploymentRuntime,
    DeploymentState,
    DeploymentStatus,
    ReplicaSlot,
    breaker_state,
)
from ._metrics import BREAKER_STATE_VALUES, ClusterMetrics
from ._pipelines import REQUEST_ERRORS, Balancer, MemberView, PipelineStatus
from ._plugins import PluginRegistry
from ._preflight import credential_problems
from ._rotation import RotationResult, rotate_credentials
from ._routing import fallback_chain, resolve_deployment
from ._supervisor import RestartPolicy
from ._telemetry import RequestTrace, Telemetry, telemetry_from_config
from ._tenants import Tenants, TenantStatus, TenantTicket

__all__ = ["Cluster", "ClusterStatus", "Execution", "open_cluster"]

log = logging.getLogger("atomr_infer.cluster")

# Errors about the request itself: another deployment would refuse it too.
_NO_FALLBACK = (
    BadRequestError,
    ContextLengthExceededError,
    ContentFilteredError,
    PayloadTooLargeError,
    NotFoundError,
)


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


class _RequestLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the request id (and deployment, once known) on every line of a request."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        prefix = f"request_id={extra.get('request_id')}"
        if extra.get("deployment"):
            prefix += f" deployment={extra['deployment']}"
        kwargs.setdefault("extra", {}).update(extra)
        return f"[{prefix}] {msg}", kwargs


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return False


class _Attempt:
    """One try of a request on one deployment; the replica may abort it."""

    def __init__(self, runtime: DeploymentRuntime, deadline: float) -> None:
        self.runtime = runtime
        self.scope = trio.CancelScope(deadline=deadline)
        self.error: InferenceError | None = None
        self.replica: ReplicaSlot | None = None
        #: the replica's crash log already counted this attempt as failed
        self.crash_counted = False
        #: when it started and when its first chunk came (balance latency averages)
        self.started = trio.current_time()
        self.first_at: float | None = None

    def abort(self, error: InferenceError) -> None:
        """Fail this attempt with ``error`` (replica crashed, deployment stopped)."""
        if self.error is None:
            self.error = error
            self.scope.cancel()


_NOTHING: Any = object()


class Execution:
    """The handle :meth:`Cluster.execute` returns: ``async with`` it to get the chunks.

    Attributes:
        request_id: the batch's request id.
        deployment: the deployment serving the request, set once it was routed and its
            first chunk arrived (``None`` before, or when every deployment failed).
        usage: the last usage the runner reported.
        cost_usd: the request's cost from the price table, set on exit.

    Errors are InferenceError subclasses (with ``.deployment`` set), raised from
    ``__aenter__`` when no deployment produced output, or from iteration after output
    began. Leaving the block cancels the request's work.
    """

    def __init__(self, cluster: Cluster, batch: ExecuteBatch) -> None:
        self._cluster = cluster
        self.batch = batch
        self.request_id = batch.request_id
        self.deployment: str | None = None
        self.usage: TokenUsage | None = None
        self.cost_usd: float | None = None
        self._log = _RequestLog(log, {"request_id": batch.request_id})
        self._stack: contextlib.AsyncExitStack | None = None
        self._attempt: _Attempt | None = None
        self._iterator: AsyncIterator[TokenChunk] | None = None
        self._first: Any = _NOTHING
        self._done = False
        self._arrival = 0.0
        self._first_at = 0.0
        self._phase = "queue"
        self._entered = False
        #: the deployment the request was last routed to (metrics label before output)
        self._routed: str | None = None
        self._recorded = False
        #: the current attempt reached a runner (a non-idempotent one must not be re-sent)
        self._dispatched = False
        #: tracing (None when telemetry is off): the request's trace, the live attempt span
        self._trace: RequestTrace | None = None
        self._attempt_span: Any = None
        self._position = 0
        #: output received from the runner so far (charged when no usage arrives)
        self._produced_chunks = 0
        self._produced_chars = 0
        #: what the request's tenant admission took (``cluster.tenants``), or None
        self._tenant_ticket: TenantTicket | None = None

    # -- entering: route, admit, dispatch, first chunk ------------------------------

    async def __aenter__(self) -> Execution:
        if self._entered:
            raise RuntimeError("an Execution can be entered once")
        self._entered = True
        cluster = self._cluster
        self._arrival = trio.current_time()
        if cluster.telemetry is not None:
            self._trace = cluster.telemetry.start_request(self.batch, self._arrival)
        try:
            return await self._enter()
        except BaseException as exc:
            # no output: the request ends here, counted once with how it ended (a client
            # that left first is "cancelled": the gateway's 499)
            await self._release_tenant(exc)
            self._record(exc)  # ends the trace too
            raise

    async def _enter(self) -> Execution:
        cluster = self._cluster
        problem = text_problem(self.batch)
        if problem is not None:
            raise problem
        chain = cluster.candidates(self.batch.model)
        primary = cluster._runtime(chain[0])
        self._routed = primary.name
        deadline = self.batch.deadline
        if deadline is None:
            deadline = self._arrival + primary.deployment.timeouts.request_timeout
        self._tenant_ticket = await cluster.tenants.admit(self.batch, deadline=deadline)
        last: InferenceError | None = None
        for position, name in enumerate(chain):
            runtime = cluster._deployments.get(name)
            if runtime is None:
                continue
            self._routed = name
            try:
                self._position = position
                await self._start_on(runtime, deadline)
                return self
            except InferenceError as exc:
                if exc.deployment is None:
                    exc.deployment = name
                last = exc
                if not self._may_fall_back(exc, runtime, deadline) or position == len(chain) - 1:
                    raise
                cluster.metrics.fallbacks.labels(name, exc.kind).inc()
                self._log.warning(
                    "deployment %s failed before output (%s: %s); trying its fallback",
                    name,
                    exc.kind,
                    exc.message,
                )
        assert last is not None
        raise last

    def _may_fall_back(
        self, exc: InferenceError, runtime: DeploymentRuntime, deadline: float
    ) -> bool:
        """Before output, anything but a bad request moves on while time is left; a
        non-idempotent deployment only moves on when the request never reached a runner."""
        if isinstance(exc, _NO_FALLBACK):
            return False
        if self._dispatched and not runtime.deployment.idempotent:
            return False
        return trio.current_time() < deadline

    async def _start_on(self, runtime: DeploymentRuntime, deadline: float) -> None:
        """Start on ``runtime``, moving to a sibling replica when one crashes under us."""
        tries = max(1, runtime.deployment.replicas)
        for attempt_no in range(tries):
            try:
                await self._try(runtime, deadline)
                return
            except SessionPoisonedError:
                crashed = self._attempt is not None and self._attempt.error is not None
                last_try = attempt_no == tries - 1
                if not crashed or last_try or not runtime.deployment.idempotent:
                    raise
                if runtime.state is not DeploymentState.SERVING:
                    raise
                self._log.warning("replica crashed before output; re-routing to a sibling")

    async def _try(self, runtime: DeploymentRuntime, deadline: float) -> None:
        stack = contextlib.AsyncExitStack()
        attempt = _Attempt(runtime, deadline)
        self._attempt = attempt
        self._phase = "queue"
        self._dispatched = False
        self._produced_chunks = self._produced_chars = 0
        stack.enter_context(attempt.scope)
        runtime.attempts.add(attempt)
        stack.callback(self._cluster._attempt_done, runtime, attempt)
        stack.push(_observed(self._cluster, attempt))
        if self._trace is not None:
            self._attempt_span = self._trace.attempt(
                runtime.name, str(runtime.plugin.name), runtime.deployment.model, self._position
            )
        try:
            await self._wait_serving(runtime)
            self._check_breaker(runtime)
            ticket = await self._admit(runtime, deadline)
            stack.push_async_callback(self._release, runtime, ticket)
            self._phase = "queue"
            replica = await self._pick(runtime)
            if self.batch.kind not in replica.runner.capabilities:
                raise BadRequestError(
                    f"deployment {runtime.name!r} does not serve {self.batch.kind} requests "
                    f"(it serves: {', '.join(sorted(map(str, replica.runner.capabilities)))})",
                    param="model",
                )
            attempt.replica = replica
            runtime.dispatched(replica, attempt)
            stack.push(_on_leave(runtime, replica, attempt))
            self._phase = "first_byte"
            self._dispatched = True
            batch = attrs.evolve(
                self.batch,
                model=runtime.deployment.model,
                deadline=deadline,
                traceparent=self._traceparent(),
            )
            self._log.debug("dispatched to replica %d", replica.index)
            iterator = await stack.enter_async_context(replica.runner.execute(batch))
            first = await _first_chunk(iterator)
            if first is not None:
                self._produced(first)
        except BaseException as exc:
            error = self._attempt_error(attempt, exc, deadline)
            self._end_attempt_span(error or exc)
            if error is None:
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            await stack.__aexit__(type(error), error, error.__traceback__)
            raise error from None
        attempt.scope.deadline = math.inf
        attempt.first_at = trio.current_time()
        self._stack = stack
        self._iterator = iterator
        self._first = first
        self.deployment = runtime.name
        self._log.extra = {"request_id": self.request_id, "deployment": runtime.name}
        self._first_at = trio.current_time()
        self._cluster.metrics.of(runtime.name).ttft.observe(self._first_at - self._arrival)
        if self._trace is not None:
            self._trace.first_token(self._first_at)

    async def _admit(self, runtime: DeploymentRuntime, deadline: float) -> Ticket:
        if self._trace is None:
            return await runtime.admission.admit(
                self.batch, deadline=deadline, on_phase=self._set_phase
            )
        span = self._trace.child("atomr.admission", {"atomr.deployment": runtime.name})
        try:
            ticket = await runtime.admission.admit(
                self.batch, deadline=deadline, on_phase=self._set_phase
            )
        except BaseException as exc:
            self._trace.t.end_span(span, exc)
            raise
        self._trace.t.end_span(span, None)
        return ticket

    def _traceparent(self) -> str | None:
        """What the runner sends upstream: the attempt span, else the caller's context."""
        if self._attempt_span is not None and self._trace is not None:
            return self._trace.t.traceparent_of(self._attempt_span)
        return self.batch.traceparent

    def _end_attempt_span(self, error: BaseException | None) -> None:
        span, self._attempt_span = self._attempt_span, None
        if span is not None and self._trace is not None:
            self._trace.t.end_span(span, error)

    def _end_trace(self, error: BaseException | None) -> None:
        if self._trace is None:
            return
        self._end_attempt_span(error)
        trace, self._trace = self._trace, None
        trace.finish(error, deployment=self.deployment, usage=self.usage, now=trio.current_time())

    def _set_phase(self, phase: str) -> None:
        self._phase = phase

    def _attempt_error(
        self, attempt: _Attempt, exc: BaseException, deadline: float
    ) -> InferenceError | None:
        """The typed error an attempt ended with (``None``: re-raise ``exc`` as is)."""
        if attempt.error is not None and (_only_cancelled(exc) or isinstance(exc, InferenceError)):
            return attempt.error
        if attempt.scope.cancel_called and _only_cancelled(exc):
            waited = trio.current_time() - self._arrival
            phase = "first_byte" if self._phase == "first_byte" else "queue"
            return RequestTimeoutError(
                f"no output from deployment {attempt.runtime.name!r} within the request "
                f"deadline ({waited:.3f}s, waiting in phase {self._phase!r}); raise "
                "timeouts.request_timeout or add capacity",
                elapsed_s=waited,
                phase=phase,
            )
        return None

    async def _wait_serving(self, runtime: DeploymentRuntime) -> None:
        while runtime.state is DeploymentState.PENDING:
            await runtime.wait_changed()
        if runtime.state is DeploymentState.FAILED:
            raise DeploymentFailedError(
                f"deployment {runtime.name!r} has failed ({runtime.reason}); fix it and "
                "deploy it again"
            )
        if runtime.state is DeploymentState.DRAINING:
            raise DrainingError(f"deployment {runtime.name!r} is being undeployed")

    def _check_breaker(self, runtime: DeploymentRuntime) -> None:
        breaker = runtime.breaker
        if breaker is not None and breaker.state == "open":
            breaker.check()  # raises CircuitOpenError with truthful timestamps

    async def _pick(self, runtime: DeploymentRuntime) -> ReplicaSlot:
        while True:
            if runtime.state is not DeploymentState.SERVING:
                await self._wait_serving(runtime)
            replica = runtime.pick_replica(self.batch)
            if replica is not None:
                return replica
            await runtime.wait_changed()

    async def _release(self, runtime: DeploymentRuntime, ticket: Ticket) -> None:
        usage = self.usage or self._usage_so_far()
        with trio.CancelScope(shield=True):
            cost = await runtime.admission.release(ticket, usage)
        if cost is None and usage is not None:
            cost = runtime.budget.cost(usage)
        self.cost_usd = cost

    def _produced(self, chunk: TokenChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.text_delta or chunk.tool_call_deltas:
            self._produced_chunks += 1
            self._produced_chars += len(chunk.text_delta)

    def _usage_so_far(self) -> TokenUsage | None:
        """What a stream that ended without usage (the client left, the upstream cut it)
        is charged: the prompt estimate plus the output it produced, never zero; ``None``
        when no output came at all (the attempt failed before its first chunk)."""
        if not self._produced_chunks:
            return None
        output = max(self._produced_chunks, math.ceil(self._produced_chars / 4))
        return TokenUsage(input_tokens=self.batch.input_token_estimate(), output_tokens=output)

    # -- iterating --------------------------------------------------------------------

    def __aiter__(self) -> Execution:
        return self

    async def __anext__(self) -> TokenChunk:
        if self._iterator is None:
            raise RuntimeError("use `async with cluster.execute(batch) as chunks`")
        if self._first is not _NOTHING:
            chunk, self._first = self._first, _NOTHING
            if chunk is None:
                self._done = True
                raise StopAsyncIteration
        else:
            try:
                chunk = await self._iterator.__anext__()
            except StopAsyncIteration:
                self._done = True
                raise
            except BaseException as exc:
                error = self._stream_error(exc)
                if error is None:
                    raise
                raise error from None
            self._produced(chunk)  # the first chunk was counted when it arrived
        if self._trace is not None:
            self._trace.chunk(chunk)
        return chunk

    def next_nowait(self) -> TokenChunk | None:
        """The next chunk if the runner already produced it, else ``None``.

        Never waits and never raises: the end of the stream and errors come from
        ``__anext__``. Runners whose iterator has no ``next_nowait`` always give ``None``.
        """
        if self._first is not _NOTHING or self._iterator is None:
            return None
        take = getattr(self._iterator, "next_nowait", None)
        if take is None:
            return None
        chunk: TokenChunk | None = take()
        if chunk is not None:
            self._produced(chunk)
            if self._trace is not None:
                self._trace.chunk(chunk)
        return chunk

    def _stream_error(self, exc: BaseException) -> InferenceError | None:
        attempt = self._attempt
        if attempt is not None and attempt.error is not None:
            if _only_cancelled(exc) or isinstance(exc, InferenceError):
                return attempt.error
        if isinstance(exc, InferenceError) and exc.deployment is None:
            exc.deployment = self.deployment
        return None

    # -- leaving ---------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        error: BaseException | None = exc
        try:
            suppressed = await stack.__aexit__(exc_type, exc, tb)
            if suppressed and exc is not None:
                # our attempt scope swallowed its own cancellation: say why it happened
                attempt = self._attempt
                error = (attempt.error if attempt else None) or InternalError(
                    "the request was cancelled by the runtime layer"
                )
                error.deployment = error.deployment or self.deployment
                raise error
        except BaseException as new:
            error = new
            raise
        finally:
            await self._release_tenant(error)
            self._record(error)
        return None

    async def _release_tenant(self, error: BaseException | None) -> None:
        ticket, self._tenant_ticket = self._tenant_ticket, None
        if ticket is None:
            return
        outcome = "ok" if error is None else "cancelled" if _only_cancelled(error) else "error"
        usage = self.usage or self._usage_so_far()
        await self._cluster.tenants.release(
            ticket, usage=usage, cost=self.cost_usd, outcome=outcome
        )

    def _record(self, error: BaseException | None) -> None:
        """Count the request, once, with its outcome (ok, error kind, cancelled)."""
        if self._recorded:
            return
        self._recorded = True
        cluster = self._cluster
        name = self.deployment or self._routed or "?"
        bound = cluster.metrics.of(name)
        if error is None:
            now = trio.current_time()
            bound.ok.inc()
            bound.latency.observe(now - self._arrival)
            produced = self.usage.output_tokens if self.usage is not None else 0
            if produced > 1:
                bound.tpot.observe((now - self._first_at) / (produced - 1))
        elif isinstance(error, InferenceError):
            cluster.metrics.requests.labels(name, "error", error.kind).inc()
            if self.deployment is not None:
                self._log.warning("failed after output began: %s: %s", error.kind, error.message)
        elif _only_cancelled(error):
            cluster.metrics.requests.labels(name, "cancelled", "").inc()
        else:
            cluster.metrics.requests.labels(name, "error", type(error).__name__).inc()
        if self.usage is not None:
            bound.tokens_in.inc(self.usage.input_tokens)
            bound.tokens_out.inc(self.usage.output_tokens)
        if self.cost_usd:
            bound.cost.inc(self.cost_usd)
        if self._trace is not None:
            self._end_trace(error)


def _observed(cluster: Cluster, attempt: _Attempt) -> Any:
    """An exit callback telling ``cluster.observe`` how a dispatched attempt went: its
    time to first byte (or to failing). Attempts refused before dispatch (breaker, rate
    limit), bad requests and clients that left before output measure nothing."""

    def leave(_type: Any, error: BaseException | None, _tb: Any) -> None:
        error = attempt.error or error
        if attempt.replica is None or isinstance(error, REQUEST_ERRORS):
            return
        first = attempt.first_at
        if first is None and error is not None and _only_cancelled(error):
            return
        ok = first is not None and (error is None or _only_cancelled(error))
        end = first if first is not None else trio.current_time()
        cluster.observe(attempt.runtime.name, latency_s=end - attempt.started, ok=ok)

    return leave


def _on_leave(runtime: DeploymentRuntime, replica: ReplicaSlot, attempt: _Attempt) -> Any:
    """An exit callback telling the deployment the attempt left, and with what error."""

    def leave(_type: Any, error: BaseException | None, _tb: Any) -> None:
        runtime.finished(replica, attempt, attempt.error or error)

    return leave


async def _first_chunk(iterator: AsyncIterator[TokenChunk]) -> TokenChunk | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


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

    def _runtime(self, name: str) -> DeploymentRuntime:
        return self._deployments[name]

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

    def _attempt_done(self, runtime: DeploymentRuntime, attempt: _Attempt) -> None:
        runtime.attempts.discard(attempt)
        if runtime.state is DeploymentState.DRAINING and not runtime.attempts:
            runtime.notify()

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
