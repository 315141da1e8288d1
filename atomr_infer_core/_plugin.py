"""What a runtime plugin contributes: ``RuntimePlugin``, and the ``hookimpl`` marker."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy

from ._deployment import Deployment
from ._kinds import RuntimeKind, TransportKind
from ._pricing import PriceTable
from ._runner import ModelRunner

__all__ = ["RunnerContext", "RuntimePlugin", "hookimpl"]

#: the marker plugins use: ``@hookimpl def register_runtimes(register): ...``
hookimpl = pluggy.HookimplMarker("atomr_infer")


@attrs.frozen(kw_only=True)
class RunnerContext:
    """What the host hands a runner factory besides the deployment and its config.

    Attributes:
        replica_index: which replica of the deployment this runner serves.
        state: the cluster's shared-state backend (rate limits, breaker, spend);
            typed loosely here because core does not know the remote layer.
        services: further host services by name (metrics hooks, clock), for runtimes
            that want them.
    """

    replica_index: int = 0
    state: Any = None
    services: Mapping[str, Any] = attrs.Factory(dict)


def _kind(value: Any) -> RuntimeKind:
    return RuntimeKind(value)


def _patterns(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class RuntimePlugin:
    """A runtime: its name, config class, factory, model-name patterns and prices.

    Attributes:
        name: the runtime's name, as deployments write it in ``runtime``.
        config_class: an attrs class for ``[deployment.runtime_config]``, structured by
            :data:`atomr_infer_core.config.converter` (strict, unknown keys rejected).
        create: ``create(deployment, config, context) -> ModelRunner``.
        transport: where its work runs.
        model_patterns: glob patterns of model names it claims for ``infer_runtime``.
        prices: its price table (empty for local runtimes).
        package: the distribution to ``pip install`` for it.
        default_deployments: deployments ``serve`` runs when started with no config
            (local runtimes use it for the embedded default; remote ones leave it empty).
        features: the request features its runners honour, by the names the gateway's
            feature check uses (``"tools"``, ``"json_schema"``, ``"json_object"``,
            ``"logprobs"``, ``"n"``); a request asking for another is refused with 400
            ``unsupported_parameter`` instead of being answered while ignoring it.
    """

    name: RuntimeKind = attrs.field(converter=_kind)
    config_class: type[Any]
    create: Callable[[Deployment, Any, RunnerContext], ModelRunner]
    transport: TransportKind = TransportKind.REMOTE_NETWORK
    model_patterns: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    prices: PriceTable = attrs.Factory(PriceTable)
    package: str = ""
    description: str = ""
    default_deployments: tuple[Deployment, ...] = attrs.field(default=(), converter=tuple)
    features: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)

    def structure_config(self, raw: Mapping[str, Any], *, path: str = "runtime_config") -> Any:
        """Structure a deployment's raw ``runtime_config`` into ``config_class``."""
        from .config import structure

        return structure(dict(raw), self.config_class, path=path)
