"""The openai runtime's ``ModelRunner``: the remote engine with the OpenAI provider."""

from __future__ import annotations

from typing import Any

import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    RequestKind,
    RunHandle,
    RunnerContext,
    RuntimeKind,
    SessionRebuildCause,
    TransportKind,
)
from atomr_infer_remote import (
    CredentialProvider,
    EngineStatistics,
    HttpClientOptions,
    RemoteEngine,
)

from ._config import OpenAIConfig
from ._wire import OpenAIProvider

__all__ = ["OpenAIRunner", "create_runner"]

_STRIP_PREFIXES = ("openai/", "azure/")


class OpenAIRunner:
    """Serves chat, completions and embeddings of one deployment replica.

    ``run`` hosts the engine (session + worker slots) until cancelled; ``execute`` queues
    a request on it. Services used from ``context.services``: ``"limiter"`` and
    ``"breaker"`` (shared with admission), ``"credentials"`` (a ``CredentialProvider``
    overriding the config's key, e.g. an Azure Entra ID token source).
    """

    transport_kind = TransportKind.REMOTE_NETWORK
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
        context = context or RunnerContext()
        self.runtime_kind = RuntimeKind(runtime)
        self.deployment = deployment
        self.config = config
        model = deployment.model
        for prefix in strip_prefixes:
            if model.startswith(prefix):
                model = model[len(prefix) :]
        credentials: CredentialProvider = context.services.get("credentials") or (
            config.credentials()
        )
        options = HttpClientOptions(
            timeouts=deployment.timeouts,
            max_connections=config.max_connections,
            http2=config.http2,
        )
        self.engine = RemoteEngine(
            OpenAIProvider(config=config, model=model, name=str(self.runtime_kind)),
            credentials,
            deployment,
            http_options=options,
            limiter=context.services.get("limiter"),
            breaker=context.services.get("breaker"),
            state=context.state,
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.engine.run(task_status=task_status)

    def execute(self, batch: ExecuteBatch) -> RunHandle:
        return self.engine.submit(batch)

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        await self.engine.rebuild_session(cause)

    def statistics(self) -> EngineStatistics:
        return self.engine.statistics()


def create_runner(
    deployment: Deployment, config: OpenAIConfig, context: RunnerContext
) -> OpenAIRunner:
    """The ``RuntimePlugin.create`` of the openai runtime."""
    return OpenAIRunner(deployment, config, context)
