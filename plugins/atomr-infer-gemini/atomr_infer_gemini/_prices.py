"""Gemini prices in USD per million tokens (standard tier, prompts up to 200k tokens).

Keys are model-id prefixes: ``PriceTable`` matches the longest one that ends at a
separator, so ``gemini-2.5-flash-preview-05-20`` prices as ``gemini-2.5-flash`` and
``gemini-2.5-flash-lite`` as itself. Thinking tokens are billed as output.
"""

from __future__ import annotations

from atomr_infer_core import ModelPrice, PriceTable

__all__ = ["PRICES"]


def _gemini(input_per_mtok: float, output_per_mtok: float, cached: float | None) -> ModelPrice:
    return ModelPrice(
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cached_input_per_mtok=cached,
    )


PRICES = PriceTable(
    {
        "gemini-3-pro": _gemini(2.00, 12.00, 0.20),
        "gemini-2.5-pro": _gemini(1.25, 10.00, 0.125),
        "gemini-2.5-flash": _gemini(0.30, 2.50, 0.03),
        "gemini-2.5-flash-lite": _gemini(0.10, 0.40, 0.01),
        "gemini-2.0-flash": _gemini(0.10, 0.40, 0.025),
        "gemini-2.0-flash-lite": _gemini(0.075, 0.30, None),
        "gemini-1.5-pro": _gemini(1.25, 5.00, 0.3125),
        "gemini-1.5-flash": _gemini(0.075, 0.30, 0.01875),
    }
)
