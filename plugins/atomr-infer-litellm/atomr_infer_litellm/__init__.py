"""atomr-infer runtime for a LiteLLM proxy, reusing the openai plugin's wire code."""

from __future__ import annotations

from ._runtime import (
    DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES,
    PLUGIN as PLUGIN,
    LiteLLMConfig as LiteLLMConfig,
    LiteLLMRunner as LiteLLMRunner,
    with_default_retries as with_default_retries,
)

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "PLUGIN",
    "LiteLLMConfig",
    "LiteLLMRunner",
    "with_default_retries",
]
