"""atomr-infer runtime for the OpenAI API and Azure OpenAI."""

from __future__ import annotations

from ._config import OpenAIConfig as OpenAIConfig
from ._plugin import PLUGIN as PLUGIN
from ._prices import OPENAI_PRICES as OPENAI_PRICES
from ._runner import OpenAIRunner as OpenAIRunner
from ._wire import (
    OpenAIProvider as OpenAIProvider,
    OpenAIStreamParser as OpenAIStreamParser,
    chat_body as chat_body,
    message_json as message_json,
    parse_usage as parse_usage,
)

__all__ = [
    "OPENAI_PRICES",
    "PLUGIN",
    "OpenAIConfig",
    "OpenAIProvider",
    "OpenAIRunner",
    "OpenAIStreamParser",
    "chat_body",
    "message_json",
    "parse_usage",
]
