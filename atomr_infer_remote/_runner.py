"""``EngineRunner``: the ModelRunner every remote provider plugin is built from, and
``remote_plugin``: its ``RuntimePlugin``.

A provider plugin declares its runner as a subclass: ``runtime_kind``, ``capabilities``,
the routing ``model_prefixes`` dropped from deployment models, and ``make_provider`` (its
:class:`~atomr_infer_remote.Provider`, the wire mapping). This class builds the
:class:`~atomr_infer_remote.RemoteEngine` from the deployment and the host's
:class:`~atomr_infer_core.RunnerContext`, and delegates the ``ModelRunner`` methods to
it. ``run`` hosts the engine (session and worker slots) in the replica's nursery until
cancelled; ``execute`` queues a request on it. The class itself is the plugin's
``create``: :func:`remote_plugin` fills in the rest of the ``RuntimePlugin``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    PriceTable,
    RequestKind,
    RunHandle,
    RunnerContext,
    RuntimeKind,
    RuntimePlugin,
    SessionRebuildCause,
    Timeouts,
    TransportKind,
    hookimpl,
)

from ._engine import EngineStatistics, Provider, RemoteEngine
from ._http import HttpClientOptions
from ._session import CredentialProvider

__all__ = ["EngineRunner", "RemoteRuntimeConfig", "registers", "remote_plugin", "upstream_model"]


class RemoteRuntimeConfig(Protocol):
    """What EngineRunner reads from a provider plugin's config class
    (:class:`~atomr_infer_remote.RemoteConfig` has it all)."""

    def credentials(self) -> CredentialProvider: ...

    def http_options(self, timeouts: Timeouts) -> HttpClientOptions: ...


def upstream_model(model: str, prefixes: Iterable[str]) -> str:
    """The model id the API knows: routing prefixes such as ``openai/`` are dropped."""
    for prefix in prefixes:
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


class EngineRunner:
    """A remote ``ModelRunner``: a provider on the remote engine.

    Services read from ``context.services``: ``"limiter"`` and ``"breaker"`` (shared with
    admission), ``"observer"`` (an ``AttemptObserver``: tracing) and ``"credentials"`` (a
    ``CredentialProvider`` that overrides the config's own, e.g. an Azure Entra ID or
    Vertex token source). Subclasses set the class attributes and ``make_provider``.
    """

    transport_kind = TransportKind.REMOTE_NETWORK
    runtime_kind: RuntimeKind
    capabilities: frozenset[RequestKind] = frozenset({RequestKind.CHAT})
    #: routing prefixes dropped from the deployment's model (``"openai/"``)
    model_prefixes: tuple[str, ...] = ()

    def make_provider(self, config: Any, model: str) -> Provider:
        """The wire mapping for ``model`` (already stripped of ``model_prefixes``)."""
        raise NotImplementedError(f"{type(self).__name__} must define make_provider")

    def __init__(
        self,
        deployment: Deployment,
        config: RemoteRuntimeConfig,
        context: RunnerContext | None = None,
    ) -> None:
        context = context or RunnerContext()
        self.deployment = deployment
        self.config: Any = config
        self.provider = self.make_provider(
            config, upstream_model(deployment.model, self.model_prefixes)
        )
        self.credentials_supplied = context.services.get("credentials") is not None
        credentials: CredentialProvider = (
            context.services.get("credentials") or config.credentials()
        )
        self.engine = RemoteEngine(
            self.provider,
            credentials,
            deployment,
            http_options=config.http_options(deployment.timeouts),
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


def remote_plugin(
    runner: type[EngineRunner],
    *,
    config_class: type[Any],
    model_patterns: Iterable[str] = (),
    prices: PriceTable | None = None,
    description: str = "",
    package: str | None = None,
) -> RuntimePlugin:
    """The ``RuntimePlugin`` of a network provider: named after ``runner.runtime_kind``,
    created by ``runner`` itself, installed as ``atomr-infer-<name>`` unless ``package``.

    ``model_patterns`` are the model names the runtime claims (globs, case-insensitive):
    the one place they are declared; the host's registry feeds them to ``infer_runtime``.
    """
    kind = runner.runtime_kind
    return RuntimePlugin(
        name=kind,
        config_class=config_class,
        create=runner,
        transport=TransportKind.REMOTE_NETWORK,
        model_patterns=model_patterns,
        prices=prices if prices is not None else PriceTable(),
        package=package or kind.package,
        description=description,
    )


def registers(*plugins: RuntimePlugin) -> Callable[..., None]:
    """A ``register_runtimes`` hook registering ``plugins``: in a plugin's entry-point
    module, ``register_runtimes = registers(PLUGIN)``."""

    @hookimpl
    def register_runtimes(register: Callable[[RuntimePlugin], None]) -> None:
        for plugin in plugins:
            register(plugin)

    return register_runtimes
