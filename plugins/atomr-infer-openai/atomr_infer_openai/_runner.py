"""The openai runtime's ``ModelRunner``: the remote engine with the OpenAI provider."""

from __future__ import annotations

from atomr_infer_core import RequestKind, RuntimeKind
from atomr_infer_remote import EngineRunner

from ._config import OpenAIConfig
from ._wire import OpenAIProvider

__all__ = ["OpenAIRunner"]


class OpenAIRunner(EngineRunner):
    """Serves chat, completions and embeddings of one deployment replica (see EngineRunner)."""

    runtime_kind = RuntimeKind(RuntimeKind.OPENAI)
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION, RequestKind.EMBEDDING})
    model_prefixes = ("openai/", "azure/")

    def make_provider(self, config: OpenAIConfig, model: str) -> OpenAIProvider:
        return OpenAIProvider(config=config, model=model, name=str(self.runtime_kind))
