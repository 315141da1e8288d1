"""Entry point of the gemini plugin: registers the ``gemini`` runtime."""

from __future__ import annotations

from atomr_infer_remote import registers, remote_plugin

from ._config import GeminiConfig
from ._prices import PRICES
from ._runner import GeminiRunner

__all__ = ["PLUGIN", "register_runtimes"]

PLUGIN = remote_plugin(
    GeminiRunner,
    config_class=GeminiConfig,
    model_patterns=("gemini-*", "google/gemini*"),
    prices=PRICES,
    description="Google Gemini on AI Studio or Vertex AI: streaming, tools, safety settings",
)
register_runtimes = registers(PLUGIN)
