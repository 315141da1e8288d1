"""Entry point of the gemini plugin: registers the ``gemini`` runtime."""

from __future__ import annotations

from collections.abc import Callable

from atomr_infer_core import RuntimePlugin, TransportKind, hookimpl

from ._config import GeminiConfig
from ._prices import PRICES
from ._runner import create_runner

__all__ = ["PLUGIN", "register_runtimes"]

PLUGIN = RuntimePlugin(
    name="gemini",
    config_class=GeminiConfig,
    create=create_runner,
    transport=TransportKind.REMOTE_NETWORK,
    model_patterns=("gemini-*", "google/gemini*"),
    prices=PRICES,
    package="atomr-infer-gemini",
    description="Google Gemini on AI Studio or Vertex AI: streaming, tools, safety settings",
)


@hookimpl
def register_runtimes(register: Callable[[RuntimePlugin], None]) -> None:
    register(PLUGIN)
