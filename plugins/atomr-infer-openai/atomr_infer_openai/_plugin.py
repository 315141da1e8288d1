"""Entry point of the openai plugin: registers the ``openai`` runtime."""

from __future__ import annotations

from collections.abc import Callable

from atomr_infer_core import RuntimePlugin, TransportKind, hookimpl

from ._config import OpenAIConfig
from ._prices import OPENAI_PRICES
from ._runner import create_runner

__all__ = ["MODEL_PATTERNS", "register_runtimes"]

MODEL_PATTERNS = (
    "gpt-*",
    "chatgpt-*",
    "o1",
    "o1-*",
    "o3",
    "o3-*",
    "o4-*",
    "text-embedding-*",
    "openai/*",
)


@hookimpl
def register_runtimes(register: Callable[[RuntimePlugin], None]) -> None:
    register(
        RuntimePlugin(
            name="openai",
            config_class=OpenAIConfig,
            create=create_runner,
            transport=TransportKind.REMOTE_NETWORK,
            model_patterns=MODEL_PATTERNS,
            prices=OPENAI_PRICES,
            package="atomr-infer-openai",
            description="OpenAI API and Azure OpenAI: chat, completions, embeddings",
        )
    )
