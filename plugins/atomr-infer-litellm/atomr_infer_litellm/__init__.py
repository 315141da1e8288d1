"""atomr-infer runtime for a LiteLLM proxy, reusing the openai plugin's wire code."""

from __future__ import annotations

from ._runtime import (
    DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES,
    MODEL_PATTERNS as MODEL_PATTERNS,
    LiteLLMConfig as LiteLLMConfig,
    LiteLLMRunner as LiteLLMRunner,
    create_runner as create_runner,
    with_default_retries as with_default_retries,
)

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "MODEL_PATTERNS",
    "LiteLLMConfig",
    "LiteLLMRunner",
    "create_runner",
    "with_default_retries",
]
