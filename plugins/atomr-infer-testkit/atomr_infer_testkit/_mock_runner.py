"""``MockRunner``: the scripted ``mock`` runtime (llm-echo's role for atomr-infer).

A deployment with ``runtime = "mock"`` answers with scripted chunks, optionally slowly,
failing, or crashing its replica. Everything is driven by :class:`MockConfig`
(``[deployment.runtime_config]``), so the same behaviours are reachable from a TOML
file, the gateway and tests. Time is ``trio.sleep``, so tests run on a MockClock.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    FinishReason,
    ModelPrice,
    PriceTable,
    RequestKind,
    RunnerContext,
    RuntimeKind,
    RuntimePlugin,
    Seconds,
    SessionRebuildCause,
    TokenChunk,
    TokenUsage,
    TransportKind,
)
from atomr_infer_core.errors import InferenceError, error_from_json

__all__ = [
    "MOCK_PRICES",
    "MockConfig",
    "MockCounters",
    "MockReplicaCrash",
    "MockRunner",
    "mock_runtime_plugin",
]

#: what the mock runtime charges: $1 per million input tokens, $2 per million output
MOCK_PRICES = PriceTable({"mock": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)})


def _non_negative(_inst: Any, attribute: attrs.Attribute[Any], value: float | int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"must be >= 0 (got {value})")


@attrs.frozen(kw_only=True)
class MockConfig:
    """What a mock deployment does.

    Attributes:
        chunks: the text deltas, one token each; cut at ``max_tokens`` (finish
            ``length``).
        chunk_delay: sleep before every chunk (so the first one too).
        start_delay: sleep in ``run()`` before the replica reports started.
        input_tokens / output_tokens: reported usage; default: the prompt estimate and
            the number of chunks sent.
        fail_with: an error kind (``"server_error"``, ``"circuit_open"``, any
            ``InferenceError.kind``) to raise before output; with ``fail_first`` only
            for the first N calls of the replica, else for every call.
        fail_after_chunks: raise ``fail_with`` (default ``server_error``) after this
            many chunks instead of before output.
        crash_on_call: the replica's N-th call (1-based) crashes the replica: ``run()``
            raises and the call never answers by itself.
        crash_on_start: the first N starts of ``run()`` raise (a replica that cannot
            come up).
        embedding_dimensions: length of the vectors ``embed`` returns.
    """

    chunks: tuple[str, ...] = attrs.field(default=("Hello", ",", " world", "!"), converter=tuple)
    chunk_delay: Seconds = attrs.field(default=0.0, validator=_non_negative)
    start_delay: Seconds = attrs.field(default=0.0, validator=_non_negative)
    input_tokens: int | None = attrs.field(default=None, validator=_non_negative)
    output_tokens: int | None = attrs.field(default=None, validator=_non_negative)
    fail_with: str | None = None
    fail_message: str = ""
    fail_first: int | None = attrs.field(default=None, validator=_non_negative)
    fail_after_chunks: int | None = attrs.field(default=None, validator=_non_negative)
    crash_on_call: int | None = attrs.field(default=None, validator=_non_negative)
    crash_on_start: int = attrs.field(default=0, validator=_non_negative)
    embedding_dimensions: int = attrs.field(default=8, validator=_non_negative)


@attrs.define
class MockCounters:
    """What one mock replica saw; tests read these."""

    starts: int = 0
    calls: int = 0
    executions: int = 0
    completions: int = 0
    cancellations: int = 0
    failures: int = 0
    rebuilds: list[SessionRebuildCause] = attrs.Factory(list)


class MockReplicaCrash(Exception):
    """Raised from ``MockRunner.run`` to crash the replica (tests and ``crash_on_call``)."""


class MockRunner:
    """A scripted :class:`~atomr_infer_core.ModelRunner`.

    ``run()`` must be running (in the replica's nursery) for ``execute`` to answer;
    :meth:`crash` makes ``run()`` raise, as a broken replica would.
    """

    runtime_kind = RuntimeKind("mock")
    transport_kind = TransportKind.LOCAL_CPU
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION, RequestKind.EMBEDDING})

    def __init__(self, deployment: Deployment, config: MockConfig, context: RunnerContext) -> None:
        self.deployment = deployment
        self.config = config
        self.context = context
        self.counters = MockCounters()
        self.running = False
        self._crash_reason: str | None = None
        self._crash_event = trio.Event()

    @property
    def replica_index(self) -> int:
        return self.context.replica_index

    def crash(self, reason: str = "crashed on purpose") -> None:
        """Make ``run()`` raise :class:`MockReplicaCrash` (from any task)."""
        self._crash_reason = reason
        self._crash_event.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.counters.starts += 1
        if self.config.start_delay:
            await trio.sleep(self.config.start_delay)
        if self.counters.starts <= self.config.crash_on_start:
            raise MockReplicaCrash(f"start {self.counters.starts} fails (crash_on_start)")
        self._crash_event = trio.Event()
        self.running = True
        task_status.started()
        try:
            await self._crash_event.wait()
            raise MockReplicaCrash(self._crash_reason or "crashed")
        finally:
            self.running = False

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        self.counters.rebuilds.append(SessionRebuildCause(cause))

    def execute(self, batch: ExecuteBatch) -> AsyncIterator[TokenChunk] | Any:
        return self._execute(batch)

    @asynccontextmanager
    async def _execute(self, batch: ExecuteBatch) -> AsyncIterator[AsyncIterator[TokenChunk]]:
        self.counters.calls += 1
        call = self.counters.calls
        if not self.running:
            self.counters.failures += 1
            raise _error("session_poisoned", f"mock replica {self.replica_index} is not running")
        if self.config.crash_on_call is not None and call == self.config.crash_on_call:
            self.crash(f"call {call} crashes the replica (crash_on_call)")
            await trio.sleep_forever()
        if self._fails_now(call) and self.config.fail_after_chunks is None:
            self.counters.failures += 1
            raise self._failure()
        self.counters.executions += 1
        done = False
        try:
            yield self._chunks(batch, call)
            done = True
        finally:
            if done:
                self.counters.completions += 1
            else:
                self.counters.cancellations += 1

    def _fails_now(self, call: int) -> bool:
        if self.config.fail_with is None and self.config.fail_after_chunks is None:
            return False
        return self.config.fail_first is None or call <= self.config.fail_first

    def _failure(self) -> InferenceError:
        kind = self.config.fail_with or "server_error"
        message = (
            self.config.fail_message or f"mock deployment {self.deployment.name!r} fails ({kind})"
        )
        return _error(kind, message)

    async def _chunks(self, batch: ExecuteBatch, call: int) -> AsyncIterator[TokenChunk]:
        if batch.kind is RequestKind.EMBEDDING:
            async for chunk in self._embeddings(batch):
                yield chunk
            return
        limit = batch.sampling.max_tokens
        script = self.config.chunks if limit is None else self.config.chunks[:limit]
        truncated = limit is not None and len(self.config.chunks) > limit
        fail_at = self.config.fail_after_chunks if self._fails_now(call) else None
        for sent, text in enumerate(script):
            if fail_at is not None and sent == fail_at:
                self.counters.failures += 1
                raise self._failure()
            if self.config.chunk_delay:
                await trio.sleep(self.config.chunk_delay)
            yield TokenChunk(request_id=batch.request_id, text_delta=text)
        if fail_at is not None and fail_at >= len(script):
            self.counters.failures += 1
            raise self._failure()
        usage = TokenUsage(
            input_tokens=self._input_tokens(batch),
            output_tokens=(
                self.config.output_tokens if self.config.output_tokens is not None else len(script)
            ),
        )
        yield TokenChunk(
            request_id=batch.request_id,
            finish_reason=FinishReason.LENGTH if truncated else FinishReason.STOP,
            usage=usage,
        )

    def _input_tokens(self, batch: ExecuteBatch) -> int:
        if self.config.input_tokens is not None:
            return self.config.input_tokens
        return batch.input_token_estimate()

    async def _embeddings(self, batch: ExecuteBatch) -> AsyncIterator[TokenChunk]:
        if self.config.chunk_delay:
            await trio.sleep(self.config.chunk_delay)
        dims = batch.dimensions or self.config.embedding_dimensions
        vectors = tuple(_vector(text, dims) for text in batch.inputs or ())
        yield TokenChunk(
            request_id=batch.request_id,
            embeddings=vectors,
            usage=TokenUsage(input_tokens=self._input_tokens(batch)),
            finish_reason=FinishReason.STOP,
        )


def _vector(text: str, dims: int) -> tuple[float, ...]:
    """A deterministic unit-ish vector for ``text``."""
    digest = b""
    counter = 0
    while len(digest) < dims:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    return tuple((b - 127.5) / 127.5 for b in digest[:dims])


def _error(kind: str, message: str) -> InferenceError:
    return error_from_json({"kind": kind, "message": message})


def mock_runtime_plugin(
    *,
    prices: PriceTable = MOCK_PRICES,
    on_create: Callable[[MockRunner], None] | None = None,
    runner_class: type[MockRunner] = MockRunner,
) -> RuntimePlugin:
    """The ``mock`` runtime as a :class:`RuntimePlugin`.

    ``on_create`` sees every runner the cluster builds (tests keep them to read
    counters or crash a replica); ``runner_class`` swaps in a subclass.
    """

    def create(deployment: Deployment, config: MockConfig, context: RunnerContext) -> MockRunner:
        runner = runner_class(deployment, config, context)
        if on_create is not None:
            on_create(runner)
        return runner

    return RuntimePlugin(
        name="mock",
        config_class=MockConfig,
        create=create,
        transport=TransportKind.LOCAL_CPU,
        model_patterns=("mock", "mock-*"),
        prices=prices,
        package="atomr-infer-testkit",
        description="scripted answers, delays, failures and crashes for tests",
    )
