"""The cascade handle: steps in order, each an ordinary request of the cluster.

``Cluster.execute`` returns a :class:`Cascade` for a cascade pipeline's name; it has the
surface of ``Execution`` (``async with``, ``async for``, ``next_nowait()``,
``.deployment``, ``.usage``, ``.cost_usd``, ``.request_id``).

Every step but the last runs to its end while the client waits, buffered: its answer is
judged (:func:`._pipelines.escalation`) and either replayed to the client or dropped for
the next step. The last step is streamed as it comes. Each step is a request of its own
on the request path (admission, permits, breaker, budget, retries, the step's
fallbacks), so an escalated step is charged like any other, except the tenant's: a
cascade is one request of its key (one RPM slot, a budget reservation of every step's
worst case, settled to what all the steps cost), admitted before the first step.
"""

from __future__ import annotations

import collections
import logging
import math
from types import TracebackType
from typing import Any

import attrs

from atomr_infer_core import (
    EscalateWhen,
    ExecuteBatch,
    Pipeline,
    TokenChunk,
    TokensBuilder,
    TokenUsage,
)
from atomr_infer_core.errors import InferenceError

from ._attempt import only_cancelled
from ._execution import Execution
from ._pipelines import escalation, step_error_escalation
from ._tenants import TenantTicket

__all__ = ["Cascade"]

log = logging.getLogger("atomr_infer.cascade")


class Cascade:
    """A cascade pipeline's request (see the module docstring).

    Attributes:
        deployment: the deployment whose answer the client gets (the answering step's,
            or the balance member that served it), once known.
        cost_usd: what every step cost together, set on exit (``None``: unpriced).
        escalations: ``(step, reason)`` of every step that escalated, in order.
    """

    def __init__(self, cluster: Any, batch: ExecuteBatch, pipeline: Pipeline) -> None:
        self._cluster = cluster
        self.batch = batch
        self.pipeline = pipeline
        self.request_id = batch.request_id
        self.deployment: str | None = None
        self.cost_usd: float | None = None
        self.escalations: list[tuple[str, str]] = []
        self._usage: Any = None
        self._live: Execution | None = None
        self._replay: collections.deque[TokenChunk] | None = None
        self._entered = False
        #: the tenant's admission of the whole cascade, and what every step used
        self._ticket: TenantTicket | None = None
        self._used: TokenUsage | None = None

    @property
    def usage(self) -> Any:
        """The answering step's usage (what the client is told)."""
        live = self._live
        return live.usage if live is not None and live.usage is not None else self._usage

    # -- entering ------------------------------------------------------------------

    async def __aenter__(self) -> Cascade:
        if self._entered:
            raise RuntimeError("a Cascade can be entered once")
        self._entered = True
        steps = self.pipeline.steps
        self._ticket = await self._cluster.tenants.admit(
            self._step_batch(steps[0], last=False),
            deadline=math.inf if self.batch.deadline is None else self.batch.deadline,
            priced_as=steps,
        )
        try:
            for position, step in enumerate(steps[:-1]):
                if await self._buffered_step(position, step):
                    await self._release_tenant(None)
                    return self
            handle = self._execution(self._step_batch(steps[-1], last=True))
            await handle.__aenter__()
        except BaseException as exc:
            await self._release_tenant(exc)
            raise
        self._live = handle
        self.deployment = handle.deployment
        return self

    def _execution(self, batch: ExecuteBatch) -> Execution:
        """A step: an ordinary request, but its tenant was admitted by the cascade."""
        return Execution(self._cluster, batch, admit_tenant=False)

    async def _release_tenant(self, error: BaseException | None) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is None:
            return
        outcome = "ok" if error is None else "cancelled" if only_cancelled(error) else "error"
        await self._cluster.tenants.release(
            ticket, usage=self._used, cost=self.cost_usd, outcome=outcome
        )

    async def _buffered_step(self, position: int, step: str) -> bool:
        """Run step ``position`` to its end; True when its answer is the one returned."""
        batch = self._step_batch(step, last=False)
        handle = self._execution(batch)
        chunks: list[TokenChunk] = []
        builder = TokensBuilder(request_id=batch.request_id)
        try:
            async with handle as stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    builder.add(chunk)
        except InferenceError as exc:
            self._charge(handle)
            found = step_error_escalation(self.pipeline, exc)
            if found is None:
                raise
            self._escalate(position, step, found.reason, found.detail)
            return False
        self._charge(handle)
        found = escalation(self.pipeline, batch, builder.build())
        if found is not None:
            self._escalate(position, step, found.reason, found.detail)
            return False
        self._replay = collections.deque(self._for_client(c) for c in chunks)
        self.deployment = handle.deployment
        self._usage = handle.usage
        return True

    def _step_batch(self, step: str, *, last: bool) -> ExecuteBatch:
        # the client's own body goes to no step: each step gets the translated request
        changes: dict[str, Any] = {
            "model": step,
            "passthrough": None,
            "pipeline": self.batch.pipeline or self.pipeline.name,
        }
        wants_logprobs = EscalateWhen.LOW_CONFIDENCE in self.pipeline.escalations
        if not last and wants_logprobs and not self.batch.sampling.logprobs:
            changes["sampling"] = attrs.evolve(self.batch.sampling, logprobs=True)
        return attrs.evolve(self.batch, **changes)

    def _for_client(self, chunk: TokenChunk) -> TokenChunk:
        """A buffered chunk as the client asked for it (logprobs only when it did)."""
        if chunk.logprobs is not None and not self.batch.sampling.logprobs:
            return attrs.evolve(chunk, logprobs=None)
        return chunk

    def _charge(self, handle: Execution) -> None:
        if handle.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + handle.cost_usd
        usage = handle.usage
        if usage is not None:
            self._used = usage if self._used is None else self._used + usage

    def _escalate(self, position: int, step: str, reason: str, detail: str) -> None:
        self.escalations.append((step, reason))
        self._cluster.metrics.escalations.labels(self.pipeline.name, step, reason).inc()
        log.info(
            "[request_id=%s] pipeline %s: step %d (%s) escalates: %s (%s)",
            self.request_id,
            self.pipeline.name,
            position,
            step,
            reason,
            detail,
        )

    # -- iterating -----------------------------------------------------------------

    def __aiter__(self) -> Cascade:
        return self

    async def __anext__(self) -> TokenChunk:
        if self._replay is not None:
            if not self._replay:
                raise StopAsyncIteration
            return self._replay.popleft()
        if self._live is None:
            raise RuntimeError("use `async with cluster.execute(batch) as chunks`")
        chunk: TokenChunk = await self._live.__anext__()
        return chunk

    def next_nowait(self) -> TokenChunk | None:
        """The next chunk if it is already here, else ``None`` (never waits or raises)."""
        if self._replay is not None:
            return self._replay.popleft() if self._replay else None
        take = getattr(self._live, "next_nowait", None)
        return take() if take is not None else None

    # -- leaving -------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        live, self._live = self._live, None
        if live is None:
            return None
        error: BaseException | None = exc
        try:
            return await live.__aexit__(exc_type, exc, tb)
        except BaseException as new:
            error = new
            raise
        finally:
            self._usage = live.usage
            self._charge(live)
            self.deployment = live.deployment or self.deployment
            await self._release_tenant(error)
