"""atomr-infer runtime for Anthropic's Messages API (``claude-*`` models)."""

from __future__ import annotations

from ._config import AnthropicConfig as AnthropicConfig
from ._plugin import PLUGIN as PLUGIN
from ._prices import PRICES as PRICES
from ._runner import (
    AnthropicRunner as AnthropicRunner,
)
from ._wire import AnthropicProvider as AnthropicProvider

__all__ = [
    "PLUGIN",
    "PRICES",
    "AnthropicConfig",
    "AnthropicProvider",
    "AnthropicRunner",
]
