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
the caller, unless the deployment continues streams on failure.

Hedging (``hedge_after``): when the attempt has no first chunk after that delay, a second
attempt starts on a sibling replica (``replicas > 1``) or the next candidate (when it is
idempotent too); both run in tasks of a nursery the Execution holds until it exits, the
first to produce a chunk wins, the other is cancelled (its upstream closed) and charged
what it consumed. The winner's chunks reach the caller through a memory channel.

Stream continuation (``continue_on_failure``): a stream that fails after output began,
before any tool-call delta, continues on the next idempotent candidate, asked to continue
the partial answer: as an assistant prefix where the runner has the ``prefill``
capability, else as an assistant message and a continuation instruction. The caller sees
one stream and one usage total (the usage of every attempt, added up).
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from atomr_infer_core import ExecuteBatch, Message, RequestKind, TokenChunk, TokenUsage
from atomr_infer_core.errors import (
    InferenceError,
    InternalError,
    SessionPoisonedError,
)

from ._attempt import Attempt, only_cancelled
from ._content import text_problem
from ._deployments import DeploymentRuntime, DeploymentState
from ._pipelines import REQUEST_ERRORS
from ._telemetry import RequestTrace, provider_name

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._tenants import TenantTicket

__all__ = ["Execution"]

log = logging.getLogger("atomr_infer.cluster")

# Errors about the request itself: another deployment would refuse it too (one list,
# shared with the cascade's step errors).
_NO_FALLBACK = REQUEST_ERRORS


#: what a runner without prefill is asked after the partial answer
CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without "
    "repeating any of it and without any preamble."
)
_RELAY_SIZE = 64
_END: Any = object()


class _Hedge:
    """Attempts racing to a first chunk in ``nursery``; the winner's chunks are relayed.

    Each leg runs in its own task, owning its attempt from enter to exit. The first leg
    to get a first chunk becomes :attr:`winner` and cancels the others (charging them
    their prompt); a leg that fails before output is recorded in :attr:`failures`.
    """

    def __init__(self, stack: contextlib.AsyncExitStack, nursery: trio.Nursery) -> None:
        self._stack = stack
        self._nursery = nursery
        self._send, self._receive = trio.open_memory_channel[Any](_RELAY_SIZE)
        self.legs: list[Attempt] = []
        self.failures: dict[Attempt, InferenceError] = {}
        self.winner: Attempt | None = None
        self._changed = trio.Event()
        self._pending: Any = _END
        self._has_pending = False

    def start(self, attempt: Attempt) -> None:
        self.legs.append(attempt)
        self._nursery.start_soon(self._run, attempt)

    def running(self, attempt: Attempt) -> bool:
        return attempt not in self.failures and self.winner is not attempt

    async def wait_decided(self) -> None:
        """Until a leg won, or every leg failed."""
        while self.winner is None and len(self.failures) < len(self.legs):
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _run(self, attempt: Attempt) -> None:
        try:
            async with attempt:
                if self.winner is not None:  # lost by a hair: it answered second
                    attempt.charge_prompt = True
                    return
                self.winner = attempt
                for other in self.legs:
                    if other is not attempt:
                        other.charge_prompt = True
                        other.cancel()
                self._wake()
                async for chunk in attempt:
                    await self._send.send(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the caller left
        except Exception as exc:
            if self.winner is attempt:
                self._put(exc)
            elif isinstance(exc, InferenceError):
                self.failures[attempt] = exc
                self._wake()
            else:
                self.failures[attempt] = InternalError(f"{type(exc).__name__}: {exc}")
                self._wake()
            return
        if self.winner is attempt:
            self._put(_END)

    def _put(self, item: Any) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            # the end or an error: the one item after the chunks; the channel has room
            # unless the caller stopped reading, and then nobody needs it
            with contextlib.suppress(trio.WouldBlock):
                self._send.send_nowait(item)
                return
            self._nursery.start_soon(self._send.send, item)

    async def __anext__(self) -> TokenChunk:
        if self._has_pending:
            item, self._has_pending = self._pending, False
        else:
            item = await self._receive.receive()
        if item is _END:
            self._has_pending, self._pending = True, _END
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def next_nowait(self) -> TokenChunk | None:
        if self._has_pending:
            return None
        try:
            item = self._receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None
        if isinstance(item, TokenChunk):
            return item
        self._pending, self._has_pending = item, True
        return None

    async def aclose(self) -> None:
        """Stop every leg and wait until each gave back what it took."""
        self._receive.close()
        for leg in self.legs:
            leg.cancel()
        await self._stack.aclose()


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

    def __init__(self, cluster: Cluster, batch: ExecuteBatch, *, admit_tenant: bool = True) -> None:
        """``admit_tenant=False``: the caller admitted ``batch.tenant`` already (a cascade
        admits its key once for all its steps)."""
        self._cluster = cluster
        self._admit_tenant = admit_tenant
        self.batch = batch
        self.request_id = batch.request_id
        self.deployment: str | None = None
        self.usage: TokenUsage | None = None
        self.cost_usd: float | None = None
        self._log = _RequestLog(log, {"request_id": batch.request_id})
        #: where the caller's chunks come from: an attempt, or a hedge's relay
        self._source: Attempt | _Hedge | None = None
        #: the attempt whose output the caller reads (a hedge's winner)
        self._serving: Attempt | None = None
        #: every attempt that served output or raced for it (their costs add up)
        self._charged: list[Attempt] = []
        #: the attempt tried last (whether it reached a runner decides a fallback)
        self._tried: Attempt | None = None
        self._chain: list[str] = []
        #: candidates up to this position were tried already (a hedge on the fallback)
        self._tried_through = -1
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
        #: continuation: the text sent so far (kept only when it may be needed), whether
        #: a tool-call delta went out, the usage of attempts that ended, a space to drop
        self._partial: list[str] | None = None
        self._tool_calls_sent = False
        self._usage_before: TokenUsage | None = None
        self._drop_leading_space = False

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
        chain = self._chain = cluster.candidates(self.batch.model)
        self._routed = chain[0]
        deadline = self.batch.deadline
        if deadline is None:
            first = cluster.runtime(chain[0])
            deadline = self._arrival + first.deployment.timeouts.request_timeout
        if self._admit_tenant:
            self._tenant_ticket = await cluster.tenants.admit(self.batch, deadline=deadline)
        last: InferenceError | None = None
        for position, name in enumerate(chain):
            runtime = cluster.find_runtime(name)
            if runtime is None or position <= self._tried_through:
                continue
            self._routed = name
            try:
                await self._start_on(runtime, deadline, position)
            except InferenceError as exc:
                if exc.deployment is None:
                    exc.deployment = name
                last = exc
                final = max(position, self._tried_through) >= len(chain) - 1
                if not self._may_fall_back(exc, runtime, deadline) or final:
                    raise
                cluster.metrics.fallbacks.labels(name, exc.kind).inc()
                self._log.warning(
                    "deployment %s failed before output (%s: %s); trying its fallback",
                    name,
                    exc.kind,
                    exc.message,
                )
                continue
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

    def _attempt(
        self,
        runtime: DeploymentRuntime,
        deadline: float,
        position: int,
        *,
        batch: ExecuteBatch | None = None,
        avoid: int | None = None,
    ) -> Attempt:
        return runtime.attempt(
            batch or self.batch,
            deadline=deadline,
            trace=self._trace,
            position=position,
            avoid=avoid,
            arrival=self._arrival,
            log=self._log,
            observer=self._observed,
        )

    async def _start_on(self, runtime: DeploymentRuntime, deadline: float, position: int) -> None:
        """Output began on ``runtime`` (or its hedge): moving to a sibling replica when one
        crashes under it before output; hedged after ``hedge_after``."""
        delay = runtime.hedge_delay()
        if delay is not None:
            target = self._hedge_target(runtime, position)
            if target is not None:
                await self._race(runtime, deadline, position, delay, target)
                return
        tries = max(1, runtime.deployment.replicas)
        for attempt_no in range(tries):
            attempt = self._tried = self._attempt(runtime, deadline, position)
            try:
                await attempt.__aenter__()
            except SessionPoisonedError:
                crashed = attempt.error is not None
                last_try = attempt_no == tries - 1
                if not crashed or last_try or not runtime.deployment.idempotent:
                    raise
                if runtime.state is not DeploymentState.SERVING:
                    raise
                self._log.warning("replica crashed before output; re-routing to a sibling")
                continue
            self._serve_from(attempt, attempt)
            return

    # -- hedging -------------------------------------------------------------------

    def _hedge_target(
        self, runtime: DeploymentRuntime, position: int
    ) -> tuple[DeploymentRuntime, int] | None:
        """Where a hedge of ``runtime`` goes: a sibling replica, else the next candidate
        when it is idempotent too; ``None``: nowhere."""
        if runtime.deployment.replicas > 1:
            return runtime, position
        for later in range(position + 1, len(self._chain)):
            other = self._cluster.find_runtime(self._chain[later])
            if other is None:
                continue
            return (other, later) if other.deployment.idempotent else None
        return None

    async def _race(
        self,
        runtime: DeploymentRuntime,
        deadline: float,
        position: int,
        delay: float,
        target: tuple[DeploymentRuntime, int],
    ) -> None:
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        race = _Hedge(stack, nursery)
        try:
            primary = self._tried = self._attempt(runtime, deadline, position)
            race.start(primary)
            with trio.move_on_after(delay):
                await race.wait_decided()
            if race.winner is None:
                failed = race.failures.get(primary)
                if failed is not None and not self._may_fall_back(failed, runtime, deadline):
                    raise failed
                other, other_position = target
                avoid = primary.replica.index if other is runtime and primary.replica else None
                second = self._attempt(other, deadline, other_position, avoid=avoid)
                if failed is None:
                    self._cluster.metrics.hedges.labels(runtime.name).inc()
                    self._log.info(
                        "no first chunk after %.3fs; hedging on %s",
                        delay,
                        "a sibling replica" if other is runtime else other.name,
                    )
                self._tried = second
                self._tried_through = max(self._tried_through, other_position)
                race.start(second)
                await race.wait_decided()
            winner = race.winner
            if winner is None:
                raise race.failures[race.legs[-1]]
        except BaseException:
            for leg in race.legs:
                leg.cancel()
            await stack.aclose()
            raise
        self._charged.extend(race.legs)
        if winner is not primary and primary not in race.failures:
            self._cluster.metrics.hedges_won.labels(runtime.name).inc()
        self._serve_from(winner, race)

    # -- output ----------------------------------------------------------------------

    def _serve_from(self, attempt: Attempt, source: Attempt | _Hedge) -> None:
        """Output began on ``attempt``: the caller reads ``source`` from now on."""
        continuing = self._serving is not None
        self._source = source
        self._serving = attempt
        if attempt not in self._charged:
            self._charged.append(attempt)
        runtime = attempt.runtime
        if runtime.deployment.continue_on_failure and self._partial is None:
            self._partial = []
        if continuing:
            return
        self.deployment = attempt.name
        self._log.extra = {"request_id": self.request_id, "deployment": attempt.name}
        self._first_at = attempt.first_at
        self._cluster.metrics.of(attempt.name).ttft.observe(self._first_at - self._arrival)
        if self._trace is not None:
            self._trace.first_token(self._first_at)
            self._trace.provider = provider_name(str(runtime.plugin.name))
            self._trace.response_model = runtime.deployment.model

    def _deliver(self, chunk: TokenChunk) -> TokenChunk:
        """What the caller gets of ``chunk`` (usage added up over a continuation)."""
        if self._usage_before is not None:
            if chunk.usage is not None:
                chunk = attrs.evolve(chunk, usage=self._usage_before + chunk.usage)
            if self._drop_leading_space and chunk.text_delta:
                self._drop_leading_space = False
                chunk = attrs.evolve(chunk, text_delta=chunk.text_delta.lstrip())
        if chunk.usage is not None:
            self.usage = chunk.usage
        if self._partial is not None:
            if chunk.tool_call_deltas or chunk.index:
                self._tool_calls_sent = True  # (or a second choice): nothing to continue
            elif chunk.text_delta:
                self._partial.append(chunk.text_delta)
        if self._trace is not None:
            self._trace.chunk(chunk)
        return chunk

    # -- iterating --------------------------------------------------------------------

    def __aiter__(self) -> Execution:
        return self

    async def __anext__(self) -> TokenChunk:
        while True:
            source = self._source
            if source is None:
                raise RuntimeError("use `async with cluster.execute(batch) as chunks`")
            try:
                chunk = await source.__anext__()
            except InferenceError as exc:
                if not await self._continue(exc):
                    raise
                continue
            return self._deliver(chunk)

    def next_nowait(self) -> TokenChunk | None:
        """The next chunk if the runner already produced it, else ``None``.

        Never waits and never raises: the end of the stream and errors come from
        ``__anext__``. Runners whose iterator has no ``next_nowait`` always give ``None``.
        """
        source = self._source
        if source is None:
            return None
        chunk = source.next_nowait()
        return None if chunk is None else self._deliver(chunk)

    # -- stream continuation -----------------------------------------------------------

    def _can_continue(self, exc: InferenceError) -> bool:
        serving = self._serving
        return (
            serving is not None
            and serving.runtime.deployment.continue_on_failure
            and self._partial is not None
            and not self._tool_calls_sent
            and not isinstance(exc, _NO_FALLBACK)
            and self.batch.kind in (RequestKind.CHAT, RequestKind.COMPLETION)
            and self.batch.passthrough is None
        )

    async def _continue(self, exc: InferenceError) -> bool:
        """After ``exc`` ended the stream: go on on the next candidate that continues it.
        ``False``: nothing can (the caller gets ``exc``)."""
        if not self._can_continue(exc):
            return False
        failed = self._serving
        assert failed is not None and self._partial is not None
        later = [
            (position, runtime)
            for position in range(failed.position + 1, len(self._chain))
            if (runtime := self._cluster.find_runtime(self._chain[position])) is not None
        ]
        if not later:
            return False
        await self._close_source(exc)
        consumed = failed.usage_so_far()
        if consumed is not None:
            before = self._usage_before
            self._usage_before = consumed if before is None else before + consumed
        partial = "".join(self._partial)
        if self._remaining_tokens() == 0:
            return False  # the cut stream had already used the whole max_tokens
        for position, runtime in later:
            if not runtime.deployment.idempotent:
                break
            batch = self._continuation(partial, prefill=runtime.supports_prefill)
            deadline = trio.current_time() + runtime.deployment.timeouts.request_timeout
            attempt = self._attempt(runtime, deadline, position, batch=batch)
            try:
                await attempt.__aenter__()
            except InferenceError as error:
                self._log.warning(
                    "deployment %s could not continue the stream (%s: %s)",
                    runtime.name,
                    error.kind,
                    error.message,
                )
                if isinstance(error, _NO_FALLBACK):
                    break
                continue
            if self._usage_before is None:
                self._usage_before = TokenUsage()
            self._cluster.metrics.continuations.labels(failed.name).inc()
            self._log.warning(
                "stream failed after output (%s: %s); continued on %s",
                exc.kind,
                exc.message,
                runtime.name,
            )
            self._serve_from(attempt, attempt)
            return True
        return False

    def _remaining_tokens(self) -> int | None:
        """What is left of the caller's ``max_tokens`` after the output of every cut
        attempt of this stream, ``None`` when it set none."""
        limit = self.batch.sampling.max_tokens
        if limit is None:
            return None
        before = self._usage_before
        return max(0, limit - (0 if before is None else before.output_tokens))

    def _continuation(self, partial: str, *, prefill: bool) -> ExecuteBatch:
        """The request asking for the rest of ``partial``, within what is left of the
        caller's ``max_tokens`` (the client sees one answer of at most that length)."""
        batch = self.batch
        changes: dict[str, Any] = {"passthrough": None, "deadline": None}
        remaining = self._remaining_tokens()
        if remaining is not None:
            changes["sampling"] = attrs.evolve(batch.sampling, max_tokens=remaining)
        if batch.kind is RequestKind.COMPLETION:
            changes["prompt"] = (batch.prompt or "") + partial
        elif prefill:
            prefix = partial.rstrip()
            self._drop_leading_space = prefix != partial
            changes["messages"] = (
                *(batch.messages or ()),
                Message(role="assistant", content=prefix),
            )
        else:
            changes["messages"] = (
                *(batch.messages or ()),
                Message(role="assistant", content=partial),
                Message(role="user", content=CONTINUE_INSTRUCTION),
            )
        return attrs.evolve(batch, **changes)

    # -- leaving ---------------------------------------------------------------------

    async def _close_source(self, exc: BaseException | None) -> None:
        source, self._source = self._source, None
        if isinstance(source, _Hedge):
            await source.aclose()
        elif source is not None:
            tb = None if exc is None else exc.__traceback__
            try:
                await source.__aexit__(None if exc is None else type(exc), exc, tb)
            except InferenceError:
                if exc is None:
                    raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._recorded:
            return None
        error: BaseException | None = exc
        try:
            source = self._source
            if isinstance(source, _Hedge):
                await self._close_source(exc)
            elif source is not None:
                self._source = None
                await source.__aexit__(exc_type, exc, tb)
        except BaseException as new:
            if isinstance(new, InferenceError):
                new.deployment = new.deployment or self.deployment
            error = new
            raise
        finally:
            costs = [a.cost_usd for a in self._charged if a.cost_usd is not None]
            self.cost_usd = sum(costs) if costs else None
            await self._release_tenant(error)
            self._record(error)
        return None

    async def _release_tenant(self, error: BaseException | None) -> None:
        ticket, self._tenant_ticket = self._tenant_ticket, None
        if ticket is None:
            return
        outcome = "ok" if error is None else "cancelled" if only_cancelled(error) else "error"
        attempt = self._serving
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
