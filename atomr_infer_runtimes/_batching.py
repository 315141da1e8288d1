"""The local continuous-batching engine: a :class:`StepModel` served as a ``ModelRunner``.

:class:`LocalEngineRunner` owns one scheduling loop, started in the replica's nursery by
``await nursery.start(runner.run)``. The loop loads the model in a worker thread, then
repeats: admit waiting sequences (bounded by ``serving.max_concurrent``, the model's
``max_batch_size`` and a per-step prompt-token budget), collect the ones whose callers
left, run ``model.step(joining, leaving)`` in a worker thread, and fan the outputs out to
per-request memory channels. Embedding requests that arrive together are embedded in one
``model.embed`` call. Every model call happens on one worker thread at a time, as the
StepModel contract requires.

A request's handle owns nothing but its receive channel: leaving the ``async with`` block
(normally, by an error, or by cancellation) marks its sequence as leaving, and the next
step frees its slot and cache. A step that raises fails only the sequences in that step
with :class:`~atomr_infer_core.errors.SessionPoisonedError`; the loop rebuilds the model
session and keeps serving. Running out of device memory is not a broken session: the
model fails that step's sequences with ``DeviceOutOfMemoryError`` itself (a per-sequence
error), so nothing is rebuilt. When the loop stops, every request still waiting or running
fails with a typed error instead of hanging.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    RequestKind,
    RunHandle,
    SequenceOutput,
    SessionRebuildCause,
    StepModel,
    TokenChunk,
    TokenUsage,
)
from atomr_infer_core.errors import (
    BadRequestError,
    DrainingError,
    InferenceError,
    InternalError,
    SessionPoisonedError,
)

__all__ = ["LocalEngineRunner"]

log = logging.getLogger("atomr_infer.local")

#: default prompt tokens that may join in one step (prefill work per step)
DEFAULT_STEP_TOKEN_BUDGET = 4096
#: most embedding inputs handed to one ``model.embed`` call
DEFAULT_EMBED_BATCH_INPUTS = 256

_ids = itertools.count()


@attrs.define(eq=False)
class _Sequence:
    """One generation request as the loop tracks it (owned by the loop's task)."""

    seq_id: str
    batch: ExecuteBatch
    send: trio.MemorySendChannel[TokenChunk | InferenceError]
    cost: int | None = None
    active: bool = False
    closed: bool = False
    #: the choice this sequence generates (``n > 1`` runs one sequence per choice)
    index: int = 0
    #: output tokens of the request's choices that finished so far (shared by them)
    group: list[int] | None = None


@attrs.define(eq=False)
class _Embedding:
    """One embedding request waiting for the next ``model.embed`` call."""

    batch: ExecuteBatch
    send: trio.MemorySendChannel[TokenChunk | InferenceError]
    closed: bool = False


def _fail(send: trio.MemorySendChannel[Any], error: InferenceError) -> None:
    try:
        send.send_nowait(error)
    except (trio.ClosedResourceError, trio.BrokenResourceError, trio.WouldBlock):
        pass
    send.close()


class LocalEngineRunner:
    """A ``ModelRunner`` that serves a :class:`StepModel` with continuous batching.

    Args:
        model: the local model (built by a runtime plugin's ``create``).
        deployment: its deployment; ``serving.max_concurrent`` bounds active sequences.
        step_token_budget: prompt tokens that may join in one step (at least one
            sequence always joins, whatever its length). Default: the model's
            ``step_token_budget`` attribute when it has one, else 4096. Smaller budgets
            spread prefill over steps (earlier first tokens for some requests, running
            sequences keep streaming); larger ones prefill more at once.
        embed_batch_inputs: most texts embedded in one ``model.embed`` call.
    """

    def __init__(
        self,
        model: StepModel,
        deployment: Deployment,
        *,
        step_token_budget: int | None = None,
        embed_batch_inputs: int = DEFAULT_EMBED_BATCH_INPUTS,
    ) -> None:
        self.model = model
        self.deployment = deployment
        self.runtime_kind = model.runtime_kind
        self.transport_kind = model.transport_kind
        self.capabilities = model.capabilities
        #: the model keeps shared prompt prefixes cached (``auto`` replica routing then
        #: sends requests sharing a prefix to the replica that holds it)
        self.prefix_cache = bool(getattr(model, "prefix_cache", False))
        self.max_active = max(1, min(deployment.serving.max_concurrent, model.max_batch_size))
        if step_token_budget is None:
            step_token_budget = getattr(model, "step_token_budget", DEFAULT_STEP_TOKEN_BUDGET)
        self.step_token_budget = int(step_token_budget)
        self.embed_batch_inputs = embed_batch_inputs
        self._waiting: deque[_Sequence] = deque()
        self._active: dict[str, _Sequence] = {}
        self._leaving: list[str] = []
        self._embeds: deque[_Embedding] = deque()
        self._work = trio.Event()
        self._running = False
        self._rebuild_requests: list[tuple[SessionRebuildCause, trio.Event]] = []
        #: steps run so far, and the largest number of sequences one step carried
        self.steps = 0
        self.peak_batch = 0

    # -- introspection --------------------------------------------------------------

    @property
    def active_count(self) -> int:
        """Sequences holding a slot (including ones leaving at the next step)."""
        return len(self._active)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def health(self) -> dict[str, Any]:
        """Engine state for health endpoints, merged with the model's own ``health()``
        when it has one (the onnx runtime reports its execution providers there)."""
        out: dict[str, Any] = {
            "running": self._running,
            "active": len(self._active),
            "waiting": len(self._waiting),
            "steps": self.steps,
            "peak_batch": self.peak_batch,
            "transport": self.model.transport_kind.value,
        }
        model_health = getattr(self.model, "health", None)
        if callable(model_health):
            out.update(model_health())
        return out

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Load the model, then schedule steps until cancelled.

        Cancelling stops the loop between steps (a step in progress finishes first);
        requests still in flight then fail with ``DrainingError``. If the model cannot
        be loaded or rebuilt, the error propagates (the replica crashed) and in-flight
        requests fail with ``SessionPoisonedError``.
        """
        await trio.to_thread.run_sync(self.model.load)
        self._running = True
        task_status.started()
        try:
            while True:
                await self._work.wait()
                self._work = trio.Event()
                await self._serve_rebuild_requests()
                await self._serve_embeddings()
                await self._serve_step()
                if self._has_sequence_work() or self._embeds or self._rebuild_requests:
                    self._work.set()
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self._fail_everything(DrainingError(self._stopped_message()))
            raise
        except BaseException as exc:
            self._fail_everything(
                SessionPoisonedError(f"{self._stopped_message()}: {exc!r}; it will restart")
            )
            raise
        finally:
            self._running = False

    def _stopped_message(self) -> str:
        return f"local deployment {self.deployment.name!r} stopped"

    def _has_sequence_work(self) -> bool:
        return bool(self._active or self._leaving or self._waiting)

    def _fail_everything(self, error: InferenceError) -> None:
        for seq in [*self._waiting, *self._active.values()]:
            _fail(seq.send, error)
        for emb in self._embeds:
            _fail(emb.send, error)
        for _cause, done in self._rebuild_requests:
            done.set()
        self._waiting.clear()
        self._active.clear()
        self._leaving.clear()
        self._embeds.clear()
        self._rebuild_requests.clear()

    async def _serve_rebuild_requests(self) -> None:
        if not self._rebuild_requests:
            return
        requests, self._rebuild_requests = self._rebuild_requests, []
        cause = requests[0][0]
        if self._active:
            error = SessionPoisonedError(
                f"local deployment {self.deployment.name!r} rebuilt its model session "
                f"({cause}); retry the request"
            )
            for seq in self._active.values():
                _fail(seq.send, error)
            self._active.clear()
            self._leaving.clear()
        await trio.to_thread.run_sync(self.model.rebuild, cause)
        for _cause, done in requests:
            done.set()

    # -- generation -----------------------------------------------------------------

    async def _measure(self, seqs: Sequence[_Sequence]) -> None:
        def measure() -> list[int | Exception]:
            out: list[int | Exception] = []
            for seq in seqs:
                try:
                    out.append(self.model.prompt_tokens(seq.batch))
                except InferenceError as exc:
                    out.append(exc)
            return out

        for seq, cost in zip(seqs, await trio.to_thread.run_sync(measure), strict=True):
            if isinstance(cost, Exception):
                if seq in self._waiting:
                    self._waiting.remove(seq)
                _fail(seq.send, cost)  # type: ignore[arg-type]
            else:
                seq.cost = cost

    async def _admit(self) -> list[_Sequence]:
        """Take waiting sequences that fit the free slots and this step's token budget."""
        free = self.max_active - len(self._active)
        if free <= 0 or not self._waiting:
            return []
        candidates = list(itertools.islice(self._waiting, free))
        unmeasured = [s for s in candidates if s.cost is None]
        if unmeasured:
            await self._measure(unmeasured)
        joining: list[_Sequence] = []
        spent = 0
        while self._waiting and len(joining) < free:
            seq = self._waiting[0]
            if seq.cost is None:  # measured after this round's candidates: next step
                break
            if joining and spent + seq.cost > self.step_token_budget:
                break
            self._waiting.popleft()
            spent += seq.cost
            joining.append(seq)
        return joining

    async def _serve_step(self) -> None:
        joining = await self._admit()
        leaving, self._leaving = self._leaving, []
        if not joining and not leaving and not self._active:
            return
        for seq in joining:
            seq.active = True
            self._active[seq.seq_id] = seq
        self.peak_batch = max(self.peak_batch, len(self._active) - len(leaving))
        in_step = [s for s in self._active.values() if s.seq_id not in leaving]
        try:
            outputs = await trio.to_thread.run_sync(
                self.model.step, [(s.seq_id, s.batch) for s in joining], leaving
            )
        except trio.Cancelled:
            raise
        except Exception as exc:
            await self._step_failed(in_step, exc)
            return
        finally:
            for seq_id in leaving:
                self._active.pop(seq_id, None)
        self.steps += 1
        for out in outputs:
            self._deliver(out)

    async def _step_failed(self, in_step: Sequence[_Sequence], exc: Exception) -> None:
        log.error(
            "local deployment %r: a model step failed (%r); failing its %d sequences "
            "and rebuilding the session",
            self.deployment.name,
            exc,
            len(in_step),
        )
        error = SessionPoisonedError(
            f"local deployment {self.deployment.name!r}: the model step failed ({exc!r}); "
            "the session is being rebuilt, retry the request"
        )
        for seq in in_step:
            self._active.pop(seq.seq_id, None)
            _fail(seq.send, error)
        self._leaving.clear()
        self._active.clear()
        await trio.to_thread.run_sync(self.model.rebuild, SessionRebuildCause.SESSION_POISONED)

    def _deliver(self, out: SequenceOutput) -> None:
        seq = self._active.get(out.seq_id)
        if seq is None:  # left while the step ran; its cache goes at the next step
            return
        if out.error is not None:
            self._active.pop(out.seq_id, None)
            error = out.error
            if not isinstance(error, InferenceError):
                error = InternalError(f"local model failed a sequence: {error!r}")
            _fail(seq.send, error)
            return
        usage = out.usage
        if usage is not None and seq.group is not None:
            # usage is cumulative per request: the choices' outputs add up, the prompt
            # counts once
            seq.group.append(usage.output_tokens)
            usage = attrs.evolve(usage, output_tokens=sum(seq.group))
        chunk = TokenChunk(
            request_id=seq.batch.request_id,
            text_delta=out.text_delta,
            index=seq.index,
            finish_reason=out.finish_reason,
            usage=usage,
            tool_call_deltas=out.tool_call_deltas,
            logprobs=out.logprobs,
        )
        try:
            seq.send.send_nowait(chunk)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        if out.finish_reason is not None:
            self._active.pop(out.seq_id, None)
            seq.send.close()

    # -- embeddings -----------------------------------------------------------------

    def _take_embeddings(self) -> list[_Embedding]:
        """The oldest waiting embedding requests with one ``dimensions``, up to the cap."""
        group: list[_Embedding] = []
        count = 0
        dims = self._embeds[0].batch.dimensions if self._embeds else None
        for emb in list(self._embeds):
            n = len(emb.batch.inputs or ())
            if emb.batch.dimensions != dims or (group and count + n > self.embed_batch_inputs):
                continue
            group.append(emb)
            count += n
        for emb in group:
            self._embeds.remove(emb)
        return [e for e in group if not e.closed]

    async def _serve_embeddings(self) -> None:
        group = self._take_embeddings() if self._embeds else []
        if not group:
            return
        texts = [t for emb in group for t in emb.batch.inputs or ()]
        dims = group[0].batch.dimensions

        def embed() -> tuple[list[list[float]], list[int]]:
            vectors = self.model.embed(texts, dims)
            return vectors, [self.model.prompt_tokens(e.batch) for e in group]

        try:
            vectors, counts = await trio.to_thread.run_sync(embed)
        except trio.Cancelled:
            raise
        except InferenceError as exc:
            for emb in group:
                _fail(emb.send, exc)
            return
        except Exception as exc:
            await self._embed_failed(group, exc)
            return
        start = 0
        for emb, tokens in zip(group, counts, strict=True):
            n = len(emb.batch.inputs or ())
            chunk = TokenChunk(
                request_id=emb.batch.request_id,
                embeddings=tuple(tuple(v) for v in vectors[start : start + n]),
                usage=TokenUsage(input_tokens=tokens),
            )
            start += n
            try:
                emb.send.send_nowait(chunk)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
            emb.send.close()

    async def _embed_failed(self, group: Sequence[_Embedding], exc: Exception) -> None:
        log.error(
            "local deployment %r: embedding failed (%r); rebuilding the session",
            self.deployment.name,
            exc,
        )
        error = SessionPoisonedError(
            f"local deployment {self.deployment.name!r}: embedding failed ({exc!r}); "
            "the session is being rebuilt, retry the request"
        )
        for emb in group:
            _fail(emb.send, error)
        for seq in self._active.values():
            _fail(seq.send, error)
        self._active.clear()
        self._leaving.clear()
        await trio.to_thread.run_sync(self.model.rebuild, SessionRebuildCause.SESSION_POISONED)

    # -- requests -------------------------------------------------------------------

    def _check(self, batch: ExecuteBatch) -> None:
        if not self._running:
            raise DrainingError(
                f"local deployment {self.deployment.name!r} is not running "
                "(still loading, or stopped); retry shortly"
            )
        if batch.kind not in self.capabilities:
            raise BadRequestError(
                f"deployment {self.deployment.name!r} serves "
                f"{', '.join(sorted(str(k) for k in self.capabilities))} requests, "
                f"not {batch.kind}",
                param="model",
            )

    def execute(self, batch: ExecuteBatch) -> RunHandle:
        """Queue ``batch``; the handle yields its chunks as steps produce them.

        Raises (on enter) ``DrainingError`` when the loop is not running and
        ``BadRequestError`` for a request kind the model does not serve.
        """
        return self._handle(batch)

    @asynccontextmanager
    async def _handle(self, batch: ExecuteBatch) -> AsyncIterator[AsyncIterator[TokenChunk]]:
        self._check(batch)
        send, receive = trio.open_memory_channel[TokenChunk | InferenceError](math.inf)
        entries: list[_Sequence | _Embedding]
        if batch.kind is RequestKind.EMBEDDING:
            entries = [_Embedding(batch=batch, send=send)]
            self._embeds.extend(entries)  # type: ignore[arg-type]
        else:
            entries = list(self._choices(batch, send))
            self._waiting.extend(entries)  # type: ignore[arg-type]
        self._work.set()
        try:
            with receive:
                yield self._chunks(receive)
        finally:
            for entry in entries:
                self._release(entry)

    def _choices(
        self, batch: ExecuteBatch, send: trio.MemorySendChannel[TokenChunk | InferenceError]
    ) -> list[_Sequence]:
        """One sequence per choice (``n``), generated side by side in the batch; each
        sends on its own clone of the request's channel, which ends when all have.
        Choice ``i`` of a seeded request samples with ``seed + i``."""
        n = batch.sampling.n
        if n == 1:
            return [_Sequence(seq_id=f"{batch.request_id}#{next(_ids)}", batch=batch, send=send)]
        seqs = []
        group: list[int] = []
        for i in range(n):
            seed = batch.sampling.seed
            sampling = attrs.evolve(batch.sampling, n=1, seed=None if seed is None else seed + i)
            seqs.append(
                _Sequence(
                    seq_id=f"{batch.request_id}#{next(_ids)}",
                    batch=attrs.evolve(batch, sampling=sampling),
                    send=send.clone(),
                    index=i,
                    group=group,
                )
            )
        send.close()
        return seqs

    async def _chunks(
        self, receive: trio.MemoryReceiveChannel[TokenChunk | InferenceError]
    ) -> AsyncIterator[TokenChunk]:
        async for item in receive:
            if isinstance(item, InferenceError):
                raise item
            yield item

    def _release(self, entry: _Sequence | _Embedding) -> None:
        """The caller left: free the slot at the next step (synchronous: safe when
        cancelled)."""
        if entry.closed:
            return
        entry.closed = True
        entry.send.close()
        if isinstance(entry, _Embedding):
            if entry in self._embeds:
                self._embeds.remove(entry)
            return
        if entry in self._waiting:
            self._waiting.remove(entry)
        elif entry.seq_id in self._active and entry.seq_id not in self._leaving:
            self._leaving.append(entry.seq_id)
            self._work.set()

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        """Rebuild the model session between steps; sequences running on the old one
        fail with ``SessionPoisonedError``. Without a running loop, rebuild directly."""
        if not self._running:
            await trio.to_thread.run_sync(self.model.rebuild, cause)
            return
        done = trio.Event()
        self._rebuild_requests.append((cause, done))
        self._work.set()
        await done.wait()
