"""``EngineRunner``: the ModelRunner every remote provider plugin is built from.

A provider plugin supplies its :class:`~atomr_infer_remote.Provider` (wire mapping) and its
config; this class builds the :class:`~atomr_infer_remote.RemoteEngine` from the
deployment and the host's :class:`~atomr_infer_core.RunnerContext`, and delegates the
``ModelRunner`` methods to it. ``run`` hosts the engine (session and worker slots) in the
replica's nursery until cancelled; ``execute`` queues a request on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    RunHandle,
    RunnerContext,
    SessionRebuildCause,
    TransportKind,
)

from ._engine import EngineStatistics, Provider, RemoteEngine
from ._http import HttpClientOptions
from ._session import CredentialProvider

__all__ = ["EngineRunner", "RemoteRuntimeConfig", "upstream_model"]


class RemoteRuntimeConfig(Protocol):
    """What EngineRunner reads from a provider plugin's config class."""

    max_connections: int
    http2: bool

    def credentials(self) -> CredentialProvider: ...


def upstream_model(model: str, prefixes: Iterable[str]) -> str:
    """The model id the API knows: routing prefixes such as ``openai/`` are dropped."""
    for prefix in prefixes:
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


class EngineRunner:
    """A remote ``ModelRunner``: a provider on the remote engine.

    Services read from ``context.services``: ``"limiter"`` and ``"breaker"`` (shared with
    admission), ``"observer"`` (an ``AttemptObserver``: tracing) and ``"credentials"`` (a ``CredentialProvider`` that overrides the
    config's own, e.g. an Azure Entra ID or Vertex token source). Subclasses set
    ``runtime_kind`` and ``capabilities``.
    """

    transport_kind = TransportKind.REMOTE_NETWORK

    def __init__(
        self,
        provider: Provider,
        deployment: Deployment,
        config: RemoteRuntimeConfig,
        context: RunnerContext | None = None,
    ) -> None:
        context = context or RunnerContext()
        self.deployment = deployment
        self.config = config
        self.provider = provider
        self.credentials_supplied = context.services.get("credentials") is not None
        credentials: CredentialProvider = (
            context.services.get("credentials") or config.credentials()
        )
        self.engine = RemoteEngine(
            provider,
            credentials,
            deployment,
            http_options=HttpClientOptions(
                timeouts=deployment.timeouts,
                max_connections=config.max_connections,
                http2=config.http2,
            ),
            limiter=context.services.get("limiter"),
            breaker=context.services.get("breaker"),
            state=context.state,
            observer=context.services.get("observer"),
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.engine.run(task_status=task_status)

    def execute(self, batch: ExecuteBatch) -> RunHandle:
        return self.engine.submit(batch)

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        await self.engine.rebuild_session(cause)

    def statistics(self) -> EngineStatistics:
        return self.engine.statistics()
