"""The openai runtime's ``ModelRunner``: the remote engine with the OpenAI provider."""

from __future__ import annotations

from atomr_infer_core import Deployment, RequestKind, RunnerContext, RuntimeKind
from atomr_infer_remote import EngineRunner, upstream_model

from ._config import OpenAIConfig
from ._wire import OpenAIProvider

__all__ = ["OpenAIRunner", "create_runner"]

_STRIP_PREFIXES = ("openai/", "azure/")


class OpenAIRunner(EngineRunner):
    """Serves chat, completions and embeddings of one deployment replica (see EngineRunner)."""

    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION, RequestKind.EMBEDDING})

    def __init__(
        self,
        deployment: Deployment,
        config: OpenAIConfig,
        context: RunnerContext | None = None,
        *,
        runtime: str = "openai",
        strip_prefixes: tuple[str, ...] = _STRIP_PREFIXES,
    ) -> None:
        self.runtime_kind = RuntimeKind(runtime)
        model = upstream_model(deployment.model, strip_prefixes)
        provider = OpenAIProvider(config=config, model=model, name=str(self.runtime_kind))
        super().__init__(provider, deployment, config, context)


def create_runner(
    deployment: Deployment, config: OpenAIConfig, context: RunnerContext
) -> OpenAIRunner:
    """The ``RuntimePlugin.create`` of the openai runtime."""
    return OpenAIRunner(deployment, config, context)
