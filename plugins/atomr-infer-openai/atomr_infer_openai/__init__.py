"""atomr-infer runtime for the OpenAI API and Azure OpenAI."""

from __future__ import annotations

from ._config import OpenAIConfig as OpenAIConfig
from ._prices import OPENAI_PRICES as OPENAI_PRICES
from ._runner import OpenAIRunner as OpenAIRunner, create_runner as create_runner
from ._wire import (
    OpenAIProvider as OpenAIProvider,
    OpenAIStreamParser as OpenAIStreamParser,
    chat_body as chat_body,
    message_json as message_json,
    parse_usage as parse_usage,
)

__all__ = [
    "OPENAI_PRICES",
    "OpenAIConfig",
    "OpenAIProvider",
    "OpenAIRunner",
    "OpenAIStreamParser",
    "chat_body",
    "create_runner",
    "message_json",
    "parse_usage",
]
