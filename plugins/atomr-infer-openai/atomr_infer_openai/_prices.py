"""OpenAI list prices in USD per million tokens (standard tier), as published in 2025.

:class:`~atomr_infer_core.PriceTable` matches the longest prefix ending at a separator, so
dated ids price as their family (``gpt-4o-2024-08-06`` → ``gpt-4o``) unless a dated id is
listed itself (``gpt-4o-2024-05-13`` kept its launch price).
"""

from __future__ import annotations

from atomr_infer_core import ModelPrice, PriceTable

__all__ = ["OPENAI_PRICES"]


def _p(inp: float, out: float, cached: float | None = None) -> ModelPrice:
    return ModelPrice(input_per_mtok=inp, output_per_mtok=out, cached_input_per_mtok=cached)


OPENAI_PRICES = PriceTable(
    {
        # GPT-5 family
        "gpt-5": _p(1.25, 10.00, 0.125),
        "gpt-5-mini": _p(0.25, 2.00, 0.025),
        "gpt-5-nano": _p(0.05, 0.40, 0.005),
        "gpt-5-chat-latest": _p(1.25, 10.00, 0.125),
        # GPT-4.1 family
        "gpt-4.1": _p(2.00, 8.00, 0.50),
        "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
        "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
        # GPT-4o family
        "gpt-4o": _p(2.50, 10.00, 1.25),
        "gpt-4o-2024-05-13": _p(5.00, 15.00),
        "gpt-4o-mini": _p(0.15, 0.60, 0.075),
        "chatgpt-4o-latest": _p(5.00, 15.00),
        # o-series (reasoning tokens bill as output)
        "o1": _p(15.00, 60.00, 7.50),
        "o1-preview": _p(15.00, 60.00, 7.50),
        "o1-mini": _p(1.10, 4.40, 0.55),
        "o1-pro": _p(150.00, 600.00),
        "o3": _p(2.00, 8.00, 0.50),
        "o3-mini": _p(1.10, 4.40, 0.55),
        "o3-pro": _p(20.00, 80.00),
        "o4-mini": _p(1.10, 4.40, 0.275),
        # older models still served
        "gpt-4.5-preview": _p(75.00, 150.00, 37.50),
        "gpt-4-turbo": _p(10.00, 30.00),
        "gpt-4": _p(30.00, 60.00),
        "gpt-3.5-turbo": _p(0.50, 1.50),
        # embeddings (input only)
        "text-embedding-3-small": _p(0.02, 0.0),
        "text-embedding-3-large": _p(0.13, 0.0),
        "text-embedding-ada-002": _p(0.10, 0.0),
    }
)
