"""Entry point of the anthropic plugin: registers the ``anthropic`` runtime."""

from __future__ import annotations

from atomr_infer_remote import registers, remote_plugin

from ._config import AnthropicConfig
from ._prices import PRICES
from ._runner import AnthropicRunner

__all__ = ["PLUGIN", "register_runtimes"]

PLUGIN = remote_plugin(
    AnthropicRunner,
    config_class=AnthropicConfig,
    model_patterns=("claude-*", "anthropic/*"),
    prices=PRICES,
    description="Anthropic Messages API (claude-*): streaming, tools, images, prompt-cache usage",
)
register_runtimes = registers(PLUGIN)
