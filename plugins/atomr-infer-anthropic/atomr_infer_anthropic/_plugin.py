"""Entry point of the anthropic plugin: registers the ``anthropic`` runtime."""

from __future__ import annotations

from collections.abc import Callable

from atomr_infer_core import RuntimePlugin, TransportKind, hookimpl

from ._config import AnthropicConfig
from ._prices import PRICES
from ._runner import create_runner

__all__ = ["PLUGIN", "register_runtimes"]

PLUGIN = RuntimePlugin(
    name="anthropic",
    config_class=AnthropicConfig,
    create=create_runner,
    transport=TransportKind.REMOTE_NETWORK,
    model_patterns=("claude-*", "anthropic/*"),
    prices=PRICES,
    package="atomr-infer-anthropic",
    description="Anthropic Messages API (claude-*): streaming, tools, images, prompt-cache usage",
)


@hookimpl
def register_runtimes(register: Callable[[RuntimePlugin], None]) -> None:
    register(PLUGIN)
