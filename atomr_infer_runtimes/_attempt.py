"""One try of a request on one deployment: :meth:`DeploymentRuntime.attempt`.

::

    async with runtime.attempt(batch, deadline=deadline) as attempt:
        async for chunk in attempt: ...     # the first chunk, then the rest

Entering walks the deployment's layers in order, each checked here and nowhere else in the
runtimes layer: wait while the deployment is ``pending`` (fail when it is ``failed`` or
``draining``) ▸ the breaker (an open one fails at once, before taking any permit) ▸
admission (budget ▸ rate limit ▸ capacity) ▸ a replica (least outstanding, or the prefix
owner) ▸ ``runner.execute`` ▸ the first chunk. All of it runs under the attempt's own
cancel scope with the request's deadline; the deadline is lifted once the first chunk
came. A replica that crashes, or a deployment that stops, fails the attempt with
:meth:`Attempt.abort`.

Leaving closes the runner's handle, tells the replica the attempt left, and gives the
admission ticket back, charging what the attempt consumed (the usage the runner reported,
else an estimate from the output it produced; ``charge_prompt`` adds the prompt of an
attempt cancelled after it reached a runner: a hedge's loser).

Errors are typed InferenceError subclasses with ``.deployment`` set: from ``__aenter__``
when no first chunk came, from iteration after. The attempt knows nothing of fallbacks,
hedges or continuations: :class:`~atomr_infer_runtimes._execution.Execution` composes
attempts into those.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from atomr_infer_core import ExecuteBatch, TokenChunk, TokenUsage
from atomr_infer_core.errors import (
    BadRequestError,
    InferenceError,
    InternalError,
    RequestTimeoutError,
)

from ._admission import Ticket

if TYPE_CHECKING:
    from ._deployments import DeploymentRuntime, ReplicaSlot
    from ._telemetry import RequestTrace

__all__ = ["Attempt", "only_cancelled"]

_NOTHING: Any = object()


def only_cancelled(exc: BaseException) -> bool:
    """``exc`` is a trio.Cancelled, or a group of nothing else."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(only_cancelled(e) for e in exc.exceptions)
    return False


class Attempt:
    """One try of ``batch`` on one deployment (see the module docstring).

    Attributes:
        runtime: the deployment tried.
        phase: where the attempt waits or runs: ``queue``, ``budget``, ``rate_limit``,
            ``first_byte``, ``streaming``.
        dispatched: the request reached a runner (a non-idempotent one must not be
            sent again).
        error: the typed error the replica or deployment aborted it with, if any.
        usage: the last usage the runner reported.
        cost_usd: what the attempt was charged, set on exit.
        started_at, first_at: when it started and when its first chunk came.
    """

    def __init__(
        self,
        runtime: DeploymentRuntime,
        batch: ExecuteBatch,
        *,
        deadline: float,
        trace: RequestTrace | None = None,
        position: int = 0,
        avoid: int | None = None,
        arrival: float | None = None,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        observer: Callable[[Attempt, BaseException | None], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.batch = batch
        self.deadline = deadline
        self.position = position
        #: a replica index not to pick when another is serving (a hedge's sibling)
        self.avoid = avoid
        self.scope = trio.CancelScope(deadline=deadline)
        #: :meth:`cancel` was called (not the deadline, not an abort)
        self.cancelled = False
        self.error: InferenceError | None = None
        self.replica: ReplicaSlot | None = None
        #: the replica's crash log already counted this attempt as failed
        self.crash_counted = False
        self.phase = "queue"
        self.dispatched = False
        self.usage: TokenUsage | None = None
        self.cost_usd: float | None = None
        #: charge the prompt estimate too when no output came (a hedge's cancelled loser)
        self.charge_prompt = False
        self.started_at = 0.0
        #: the request's arrival (timeouts report the time since then)
        self._arrival = arrival
        self.first_at = 0.0
        self.produced_chunks = 0
        self.produced_chars = 0
        self._trace = trace
        self._span: Any = None
        #: the request's logger (it puts the request id on every line)
        self._log = log if log is not None else logging.getLogger("atomr_infer.cluster")
        #: told once how the attempt ended (the cluster's latency observations)
        self._observer = observer
        self._stack: contextlib.AsyncExitStack | None = None
        self._iterator: AsyncIterator[TokenChunk] | None = None
        self._first: Any = _NOTHING

    def abort(self, error: InferenceError) -> None:
        """Fail this attempt with ``error`` (replica crashed, deployment stopped)."""
        if self.error is None:
            self.error = error
            self.scope.cancel()

    def cancel(self) -> None:
        """Stop this attempt (a hedge lost): it fails with an InternalError saying so."""
        self.cancelled = True
        self.scope.cancel()

    @property
    def name(self) -> str:
        return self.runtime.name

    # -- entering -------------------------------------------------------------------

    async def __aenter__(self) -> Attempt:
        runtime = self.runtime
        self.started_at = trio.current_time()
        stack = contextlib.AsyncExitStack()
        stack.enter_context(self.scope)
        runtime.attempt_started(self)
        stack.callback(runtime.attempt_done, self)
        if self._observer is not None:
            observer = self._observer
            stack.push(lambda _t, error, _tb: observer(self, error))
        if self._trace is not None:
            self._span = self._trace.attempt(
                runtime.name, str(runtime.plugin.name), runtime.deployment.model, self.position
            )
        try:
            await runtime.wait_serving()
            runtime.check_breaker()
            ticket = await self._admit()
            stack.push_async_callback(self._release, ticket)
            self.phase = "queue"
            replica = await runtime.wait_replica(self.batch, avoid=self.avoid)
            if self.batch.kind not in replica.runner.capabilities:
                raise BadRequestError(
                    f"deployment {runtime.name!r} does not serve {self.batch.kind} requests "
                    f"(it serves: {', '.join(sorted(map(str, replica.runner.capabilities)))})",
                    param="model",
                )
            self.replica = replica
            runtime.dispatched(replica, self)
            stack.push(self._on_leave(replica))
            self.phase = "first_byte"
            self.dispatched = True
            batch = attrs.evolve(
                self.batch,
                model=runtime.deployment.model,
                deadline=self.deadline,
                traceparent=self._traceparent(),
            )
            self._log.debug("dispatched to replica %d", replica.index)
            iterator = await stack.enter_async_context(replica.runner.execute(batch))
            first = await _first_chunk(iterator)
            if first is not None:
                self._produced(first)
        except BaseException as exc:
            error = self._error_of(exc)
            self._end_span(error or exc)
            if error is None:
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            if error.deployment is None:
                error.deployment = runtime.name
            await stack.__aexit__(type(error), error, error.__traceback__)
            raise error from None
        self.scope.deadline = math.inf
        self.phase = "streaming"
        self._stack = stack
        self._iterator = iterator
        self._first = first
        self.first_at = trio.current_time()
        runtime.observe_first_chunk(self.first_at - self.started_at)
        return self

    async def _admit(self) -> Ticket:
        admission = self.runtime.admission
        if self._trace is None:
            return await admission.admit(self.batch, deadline=self.deadline, on_phase=self._phase)
        span = self._trace.child("atomr.admission", {"atomr.deployment": self.runtime.name})
        try:
            ticket = await admission.admit(self.batch, deadline=self.deadline, on_phase=self._phase)
        except BaseException as exc:
            self._trace.t.end_span(span, exc)
            raise
        self._trace.t.end_span(span, None)
        return ticket

    def _phase(self, phase: str) -> None:
        self.phase = phase

    def _traceparent(self) -> str | None:
        """What the runner sends upstream: the attempt span, else the caller's context."""
        if self._span is not None and self._trace is not None:
            return self._trace.t.traceparent_of(self._span)
        return self.batch.traceparent

    def _end_span(self, error: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is not None and self._trace is not None:
            self._trace.t.end_span(span, error)

    def _error_of(self, exc: BaseException) -> InferenceError | None:
        """The typed error the attempt ended with before output (``None``: ``exc`` as is)."""
        if self.error is not None and (only_cancelled(exc) or isinstance(exc, InferenceError)):
            return self.error
        if self.cancelled and only_cancelled(exc):
            return InternalError(f"the attempt on {self.runtime.name!r} was cancelled")
        if self.scope.cancel_called and only_cancelled(exc):
            since = self.started_at if self._arrival is None else self._arrival
            waited = trio.current_time() - since
            phase = "first_byte" if self.phase == "first_byte" else "queue"
            return RequestTimeoutError(
                f"no output from deployment {self.runtime.name!r} within the request "
                f"deadline ({waited:.3f}s, waiting in phase {self.phase!r}); raise "
                "timeouts.request_timeout or add capacity",
                elapsed_s=waited,
                phase=phase,
            )
        return None

    def _on_leave(self, replica: ReplicaSlot) -> Callable[..., None]:
        """An exit callback telling the deployment the attempt left, and with what error."""

        def leave(_type: Any, error: BaseException | None, _tb: Any) -> None:
            self.runtime.finished(replica, self, self.error or error)

        return leave

    # -- iterating ------------------------------------------------------------------

    def __aiter__(self) -> Attempt:
        return self

    async def __anext__(self) -> TokenChunk:
        if self._iterator is None:
            raise RuntimeError("enter the attempt first")
        if self._first is not _NOTHING:
            chunk, self._first = self._first, _NOTHING
            if chunk is None:
                raise StopAsyncIteration
            return chunk  # type: ignore[no-any-return]
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            error = self._stream_error(exc)
            if error is None:
                raise
            raise error from None
        self._produced(chunk)
        return chunk

    def next_nowait(self) -> TokenChunk | None:
        """The next chunk if the runner already produced it, else ``None`` (never waits,
        never raises; runners whose iterator has no ``next_nowait`` always give ``None``)."""
        if self._first is not _NOTHING or self._iterator is None:
            return None
        take = getattr(self._iterator, "next_nowait", None)
        if take is None:
            return None
        chunk: TokenChunk | None = take()
        if chunk is not None:
            self._produced(chunk)
        return chunk

    def _stream_error(self, exc: BaseException) -> InferenceError | None:
        if self.error is not None and (only_cancelled(exc) or isinstance(exc, InferenceError)):
            return self.error
        if isinstance(exc, InferenceError) and exc.deployment is None:
            exc.deployment = self.runtime.name
        return None

    def _produced(self, chunk: TokenChunk) -> None:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.text_delta or chunk.tool_call_deltas:
            self.produced_chunks += 1
            self.produced_chars += len(chunk.text_delta)

    def usage_so_far(self) -> TokenUsage | None:
        """What the attempt is charged: the runner's usage, else (a stream that ended
        without usage: the client left, the upstream cut it) the prompt estimate plus the
        output it produced, never zero; ``None`` when no output came at all, unless
        :attr:`charge_prompt` (then the prompt estimate)."""
        if self.usage is not None:
            return self.usage
        if not self.produced_chunks:
            if self.charge_prompt and self.dispatched:
                return TokenUsage(input_tokens=self.batch.input_token_estimate())
            return None
        output = max(self.produced_chunks, math.ceil(self.produced_chars / 4))
        return TokenUsage(input_tokens=self.batch.input_token_estimate(), output_tokens=output)

    # -- leaving --------------------------------------------------------------------

    async def _release(self, ticket: Ticket) -> None:
        usage = self.usage_so_far()
        runtime = self.runtime
        with trio.CancelScope(shield=True):
            cost = await runtime.admission.release(ticket, usage)
        if cost is None and usage is not None:
            cost = runtime.budget.cost(usage)
        self.cost_usd = cost
        runtime.count_consumed(self.usage, cost)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            suppressed = await stack.__aexit__(exc_type, exc, tb)
        except BaseException as new:
            self._end_span(new)
            raise
        if suppressed and exc is not None:
            # the attempt's scope swallowed its own cancellation: say why it happened
            error = self.error or InternalError(
                f"the attempt on {self.runtime.name!r} was cancelled"
                if self.cancelled
                else "the request was cancelled by the runtime layer"
            )
            error.deployment = error.deployment or self.runtime.name
            self._end_span(error)
            raise error
        self._end_span(exc)
        return None


async def _first_chunk(iterator: AsyncIterator[TokenChunk]) -> TokenChunk | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None
