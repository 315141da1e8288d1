"""The seam between a local model and the host's continuous-batching engine.

A local runtime plugin (torch, onnx) builds a :class:`StepModel`; the runtime layer's
local engine (``atomr_infer_runtimes._batching``) turns it into a
:class:`~atomr_infer_core.ModelRunner`: it owns the scheduling loop in the replica's
nursery, admits sequences up to ``serving.max_concurrent`` and a per-step token budget,
and calls :meth:`StepModel.step` in a worker thread so the event loop stays free.

Threading contract: every method except ``capabilities``/attributes is called from one
worker thread at a time, never concurrently, so a StepModel needs no locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ._kinds import RuntimeKind, TransportKind
from ._messages import ExecuteBatch, RequestKind
from ._runner import SessionRebuildCause
from ._tokens import FinishReason, TokenUsage

__all__ = ["SequenceOutput", "StepModel"]


@attrs.frozen(kw_only=True)
class SequenceOutput:
    """What one step produced for one sequence.

    ``text_delta`` is text safe to send (stop sequences already cut, partial stop
    matches held back). ``finish_reason`` set means the sequence is done and the model
    has already freed its slot and cache; ``usage`` is then the final usage.
    ``error`` set means only this sequence failed (the engine raises it to its caller).
    """

    seq_id: str
    text_delta: str = ""
    new_tokens: int = 0
    finish_reason: FinishReason | None = None
    usage: TokenUsage | None = None
    error: Exception | None = None


@runtime_checkable
class StepModel(Protocol):
    """A local model advanced one step at a time for every active sequence at once."""

    runtime_kind: RuntimeKind
    transport_kind: TransportKind
    capabilities: frozenset[RequestKind]
    #: the most sequences one step can carry
    max_batch_size: int

    def load(self) -> None:
        """Load weights and build the session (blocking; runs in a worker thread)."""
        ...

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        """Tokens the prompt of ``batch`` takes (the engine's per-step budget uses it)."""
        ...

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        """Drop ``leaving`` (cancelled; free their slots and caches), prefill ``joining``,
        then advance every active sequence by one token. Returns one output per active
        sequence that produced something or finished. Raising means the session is
        broken: every active sequence fails and the engine calls :meth:`rebuild`."""
        ...

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        """Embed a batch of texts (blocking). Raises BadRequestError if unsupported."""
        ...

    def rebuild(self, cause: SessionRebuildCause) -> None:
        """Drop every sequence and rebuild the model session (blocking)."""
        ...
