"""The request path: :class:`Execution`, what :meth:`Cluster.execute` returns.

One request, top down, each layer with one owner::

    Execution (this module)      route ▸ the candidates in order (fallbacks) ▸ a sibling
                                 replica when one crashes under us
      ▸ Attempt (._attempt)      on one deployment: wait serving ▸ breaker ▸ admission ▸
                                 replica ▸ runner.execute ▸ first chunk, under the deadline
        ▸ runner (an engine)     the upstream: queue ▸ worker slot ▸ HTTP ▸ decode ▸ retry

The Execution asks the cluster only for the candidates of a model
(:meth:`Cluster.candidates`) and a deployment by name (:meth:`Cluster.runtime`); it asks a
deployment only for an attempt. Everything up to the first chunk runs under the request's
deadline (``batch.deadline``, else arrival + the first deployment's
``timeouts.request_timeout``); a failure before output moves on to a sibling replica
(crash) or the next candidate while time is left; after output began, the error goes to
the caller.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from atomr_infer_core import ExecuteBatch, TokenChunk, TokenUsage
from atomr_infer_core.errors import (
    InferenceError,
    SessionPoisonedError,
)

from ._attempt import Attempt, only_cancelled
from ._content import text_problem
from ._deployments import DeploymentRuntime, DeploymentState
from ._pipelines import REQUEST_ERRORS
from ._telemetry import RequestTrace

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._tenants import TenantTicket

__all__ = ["Execution"]

log = logging.getLogger("atomr_infer.cluster")

# Errors about the request itself: another deployment would refuse it too (one list,
# shared with the cascade's step errors).
_NO_FALLBACK = REQUEST_ERRORS


class _RequestLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the request id (and deployment, once known) on every line of a request."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        prefix = f"request_id={extra.get('request_id')}"
        if extra.get("deployment"):
            prefix += f" deployment={extra['deployment']}"
        kwargs.setdefault("extra", {}).update(extra)
        return f"[{prefix}] {msg}", kwargs


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
        #: the attempt whose chunks the caller reads (None before output)
        self._attempt: Attempt | None = None
        #: the attempt tried last (whether it reached a runner decides a fallback)
        self._tried: Attempt | None = None
        self._arrival = 0.0
        self._first_at = 0.0
        self._entered = False
        #: the deployment the request was last routed to (metrics label before output)
        self._routed: str | None = None
        self._recorded = False
        #: tracing (None when telemetry is off)
        self._trace: RequestTrace | None = None
        #: what the request's tenant admission took (``cluster.tenants``), or None
        self._tenant_ticket: TenantTicket | None = None

    # -- entering: route, then the candidates in order ------------------------------

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
        self._routed = chain[0]
        deadline = self.batch.deadline
        if deadline is None:
            first = cluster.runtime(chain[0])
            deadline = self._arrival + first.deployment.timeouts.request_timeout
        self._tenant_ticket = await cluster.tenants.admit(self.batch, deadline=deadline)
        last: InferenceError | None = None
        for position, name in enumerate(chain):
            runtime = cluster.find_runtime(name)
            if runtime is None:
                continue
            self._routed = name
            try:
                attempt = await self._start_on(runtime, deadline, position)
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
                continue
            self._serve_from(attempt)
            return self
        assert last is not None
        raise last

    def _may_fall_back(
        self, exc: InferenceError, runtime: DeploymentRuntime, deadline: float
    ) -> bool:
        """Before output, anything but a bad request moves on while time is left; a
        non-idempotent deployment only moves on when the request never reached a runner."""
        if isinstance(exc, _NO_FALLBACK):
            return False
        tried = self._tried
        if tried is not None and tried.dispatched and not runtime.deployment.idempotent:
            return False
        return trio.current_time() < deadline

    async def _start_on(
        self, runtime: DeploymentRuntime, deadline: float, position: int
    ) -> Attempt:
        """An entered attempt on ``runtime``, moving to a sibling replica when one crashes
        under it before output."""
        tries = max(1, runtime.deployment.replicas)
        for attempt_no in range(tries):
            attempt = runtime.attempt(
                self.batch,
                deadline=deadline,
                trace=self._trace,
                position=position,
                arrival=self._arrival,
                log=self._log,
                observer=self._observed,
            )
            self._tried = attempt
            try:
                await attempt.__aenter__()
                return attempt
            except SessionPoisonedError:
                crashed = attempt.error is not None
                last_try = attempt_no == tries - 1
                if not crashed or last_try or not runtime.deployment.idempotent:
                    raise
                if runtime.state is not DeploymentState.SERVING:
                    raise
                self._log.warning("replica crashed before output; re-routing to a sibling")
        raise AssertionError("unreachable")  # pragma: no cover

    def _serve_from(self, attempt: Attempt) -> None:
        """Output began on ``attempt``: the caller reads its chunks from now on."""
        self._attempt = attempt
        self.deployment = attempt.name
        self._log.extra = {"request_id": self.request_id, "deployment": attempt.name}
        self._first_at = attempt.first_at
        self._cluster.metrics.of(attempt.name).ttft.observe(self._first_at - self._arrival)
        if self._trace is not None:
            self._trace.first_token(self._first_at)

    # -- iterating --------------------------------------------------------------------

    def __aiter__(self) -> Execution:
        return self

    async def __anext__(self) -> TokenChunk:
        attempt = self._attempt
        if attempt is None:
            raise RuntimeError("use `async with cluster.execute(batch) as chunks`")
        chunk = await attempt.__anext__()
        if chunk.usage is not None:
            self.usage = chunk.usage
        if self._trace is not None:
            self._trace.chunk(chunk)
        return chunk

    def next_nowait(self) -> TokenChunk | None:
        """The next chunk if the runner already produced it, else ``None``.

        Never waits and never raises: the end of the stream and errors come from
        ``__anext__``. Runners whose iterator has no ``next_nowait`` always give ``None``.
        """
        attempt = self._attempt
        if attempt is None:
            return None
        chunk = attempt.next_nowait()
        if chunk is not None:
            if chunk.usage is not None:
                self.usage = chunk.usage
            if self._trace is not None:
                self._trace.chunk(chunk)
        return chunk

    # -- leaving ---------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return None
        error: BaseException | None = exc
        try:
            await attempt.__aexit__(exc_type, exc, tb)
        except BaseException as new:
            if isinstance(new, InferenceError):
                new.deployment = new.deployment or self.deployment
            error = new
            raise
        finally:
            self.cost_usd = attempt.cost_usd
            await self._release_tenant(error)
            self._record(error)
        return None

    async def _release_tenant(self, error: BaseException | None) -> None:
        ticket, self._tenant_ticket = self._tenant_ticket, None
        if ticket is None:
            return
        outcome = "ok" if error is None else "cancelled" if only_cancelled(error) else "error"
        attempt = self._attempt
        usage = self.usage or (None if attempt is None else attempt.usage_so_far())
        await self._cluster.tenants.release(
            ticket, usage=usage, cost=self.cost_usd, outcome=outcome
        )

    def _observed(self, attempt: Attempt, error: BaseException | None) -> None:
        """Tell ``cluster.observe`` how a dispatched attempt went: its time to first byte
        (or to failing). Attempts refused before dispatch (breaker, rate limit), bad
        requests and attempts cancelled before output measure nothing."""
        error = attempt.error or error
        if attempt.replica is None or isinstance(error, REQUEST_ERRORS):
            return
        answered = attempt.phase == "streaming"
        if not answered and error is not None and (only_cancelled(error) or attempt.cancelled):
            return
        ok = answered and (error is None or only_cancelled(error))
        end = attempt.first_at if answered else trio.current_time()
        self._cluster.observe(attempt.name, latency_s=end - attempt.started_at, ok=ok)

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
        elif only_cancelled(error):
            cluster.metrics.requests.labels(name, "cancelled", "").inc()
        else:
            cluster.metrics.requests.labels(name, "error", type(error).__name__).inc()
        if self._trace is not None:
            trace, self._trace = self._trace, None
            trace.finish(
                error, deployment=self.deployment, usage=self.usage, now=trio.current_time()
            )
