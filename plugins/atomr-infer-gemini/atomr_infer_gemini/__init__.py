"""atomr-infer runtime for Google Gemini (``gemini-*``): AI Studio and Vertex AI."""

from __future__ import annotations

from ._config import (
    CommandCredential as CommandCredential,
    GeminiConfig as GeminiConfig,
    SafetySetting as SafetySetting,
)
from ._plugin import PLUGIN as PLUGIN
from ._prices import PRICES as PRICES
from ._runner import (
    GeminiRunner as GeminiRunner,
)
from ._wire import GeminiProvider as GeminiProvider

__all__ = [
    "PLUGIN",
    "PRICES",
    "CommandCredential",
    "GeminiConfig",
    "GeminiProvider",
    "GeminiRunner",
    "SafetySetting",
]
