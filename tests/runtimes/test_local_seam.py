"""A runtime whose factory returns a StepModel is served by the local batching engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    FinishReason,
    RequestKind,
    RunnerContext,
    RuntimeKind,
    RuntimePlugin,
    SequenceOutput,
    SessionRebuildCause,
    TokenUsage,
    TransportKind,
)
from atomr_infer_core.errors import BadRequestError
from atomr_infer_runtimes import open_cluster


@attrs.frozen
class EchoConfig:
    pass


class EchoStepModel:
    """Echoes the prompt back one character per step."""

    runtime_kind = RuntimeKind("echo")
    transport_kind = TransportKind.LOCAL_CPU
    capabilities = frozenset({RequestKind.COMPLETION, RequestKind.CHAT})
    max_batch_size = 4

    def __init__(self) -> None:
        self.loaded = False
        self.left: dict[str, str] = {}

    def load(self) -> None:
        self.loaded = True

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        return len(batch.prompt_text())

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        for seq_id in leaving:
            self.left.pop(seq_id, None)
        for seq_id, batch in joining:
            self.left[seq_id] = batch.prompt_text()
        out = []
        for seq_id, rest in list(self.left.items()):
            if rest:
                self.left[seq_id] = rest[1:]
                out.append(SequenceOutput(seq_id=seq_id, text_delta=rest[0], new_tokens=1))
            else:
                del self.left[seq_id]
                out.append(
                    SequenceOutput(
                        seq_id=seq_id,
                        finish_reason=FinishReason.STOP,
                        usage=TokenUsage(output_tokens=1),
                    )
                )
        return out

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        return [[float(len(text))] for text in inputs]

    def rebuild(self, cause: SessionRebuildCause) -> None:
        self.left.clear()


async def test_step_model_is_wrapped_in_the_local_engine() -> None:
    models: list[EchoStepModel] = []

    def create(deployment: Deployment, config: Any, context: RunnerContext) -> EchoStepModel:
        models.append(EchoStepModel())
        return models[-1]

    plugin = RuntimePlugin(
        name="echo", config_class=EchoConfig, create=create, transport=TransportKind.LOCAL_CPU
    )
    dep = Deployment(name="echo", model="echo-1", runtime="echo")
    async with open_cluster([dep], plugins=[plugin], load_entry_points=False) as cluster:
        reply = await cluster.complete("echo", prompt="abc")
        assert reply.text == "abc"
        assert reply.deployment == "echo"
        assert reply.cost_usd is None  # local: no price table
        assert models[0].loaded
        with pytest.raises(BadRequestError, match="does not serve embedding requests"):
            await cluster.embed("echo", ["x"])
