"""Entry point of the openai plugin: registers the ``openai`` runtime."""

from __future__ import annotations

from atomr_infer_remote import registers, remote_plugin

from ._config import OpenAIConfig
from ._prices import OPENAI_PRICES
from ._runner import OpenAIRunner

__all__ = ["PLUGIN", "register_runtimes"]

PLUGIN = remote_plugin(
    OpenAIRunner,
    config_class=OpenAIConfig,
    model_patterns="gpt-* chatgpt-* o1 o1-* o3 o3-* o4-* text-embedding-* openai/*".split(),
    prices=OPENAI_PRICES,
    description="OpenAI API and Azure OpenAI: chat, completions, embeddings",
)
register_runtimes = registers(PLUGIN)
