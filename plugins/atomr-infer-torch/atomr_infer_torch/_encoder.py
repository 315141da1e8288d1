"""A transformers encoder serving sentence embeddings: mean-pooled, L2-normalised."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atomr_infer_core import (
    ExecuteBatch,
    RequestKind,
    RuntimeKind,
    SequenceOutput,
    SessionRebuildCause,
    TransportKind,
    out_of_memory,
)
from atomr_infer_core.errors import BadRequestError

from ._config import TorchConfig
from ._device import expected_transport, pick_device, pick_dtype, transport_for
from ._weights import resolve_weights

__all__ = ["TorchEncoder", "pool_embeddings"]

log = logging.getLogger("atomr_infer.torch")


def pool_embeddings(hidden: Any, mask: Any, dimensions: int | None) -> Any:
    """Mean over the unmasked tokens, cut to ``dimensions``, then L2-normalised (torch)."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if dimensions is not None:
        pooled = pooled[:, :dimensions]
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)


class TorchEncoder:
    """A ``StepModel`` that only embeds (``task = "embed"``); batches of texts are padded
    together and run ``max_batch_size`` at a time."""

    runtime_kind = RuntimeKind(RuntimeKind.TORCH)
    capabilities = frozenset({RequestKind.EMBEDDING})

    def __init__(self, config: TorchConfig, *, weights: str, name: str = "torch") -> None:
        self.config = config
        self.weights = weights
        self.name = name
        self.max_batch_size = config.max_batch_size
        #: resolved by ``load`` ("auto" becomes "cpu" or "cuda:0")
        self.device = config.device
        self.transport_kind: TransportKind = expected_transport(config.device)
        self.model: Any = None
        self.tokenizer: Any = None
        self.path: Path | None = None

    def load(self) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = pick_device(self.config.device)
        self.transport_kind = transport_for(self.device)
        self.path = resolve_weights(self.weights, self.config.cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        dtype = pick_dtype(self.config.dtype, self.device)
        self.model = AutoModel.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        limits = [
            self.tokenizer.model_max_length,
            getattr(self.model.config, "max_position_embeddings", None),
            512,
        ]
        self.max_length = int(min(x for x in limits if x))
        self.dimensions = int(self.model.config.hidden_size)
        log.info("torch deployment %r: loaded encoder %s on %s", self.name, self.path, self.device)

    def rebuild(self, cause: SessionRebuildCause) -> None:
        log.warning("torch deployment %r: rebuilding the model session (%s)", self.name, cause)
        self.model = None
        self.load()

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        texts = list(batch.inputs or [batch.prompt_text()])
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return sum(len(ids) for ids in enc["input_ids"])

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        error = BadRequestError(
            f"deployment {self.name!r} is an embedding model; use /v1/embeddings",
            param="model",
        )
        return [SequenceOutput(seq_id=seq_id, error=error) for seq_id, _ in joining]

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        import torch

        if dimensions is not None and not 1 <= dimensions <= self.dimensions:
            raise BadRequestError(
                f"deployment {self.name!r} embeds in {self.dimensions} dimensions; "
                f"dimensions must be between 1 and {self.dimensions} (got {dimensions})",
                param="dimensions",
            )
        vectors: list[list[float]] = []
        try:
            with torch.inference_mode():
                for start in range(0, len(inputs), self.max_batch_size):
                    texts = list(inputs[start : start + self.max_batch_size])
                    enc = self.tokenizer(
                        texts,
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    ).to(self.device)
                    hidden = self.model(**enc).last_hidden_state
                    pooled = pool_embeddings(hidden, enc["attention_mask"], dimensions)
                    vectors += pooled.cpu().tolist()
        except torch.OutOfMemoryError as exc:
            # the engine fails this call's requests with it and keeps serving
            log.error(
                "torch deployment %r: out of memory on %s embedding %d texts: %s",
                self.name,
                self.device,
                len(inputs),
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
            raise out_of_memory(
                name=self.name,
                device=self.device,
                work=f"embedding {len(inputs)} texts",
                lower_dtype=f'the dtype (runtime_config.dtype = "float16"; now {dtype})',
            ) from None
        return vectors
