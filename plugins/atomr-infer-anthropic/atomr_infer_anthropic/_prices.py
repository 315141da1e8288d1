"""Claude prices in USD per million tokens (standard tier, 5-minute cache writes).

Keys are model-id prefixes: ``PriceTable`` matches the longest one that ends at a
separator, so dated ids (``claude-sonnet-4-5-20250929``) and ``-latest`` aliases price as
their family. Cache writes cost 1.25x input, cache reads 0.1x input.
"""

from __future__ import annotations

from atomr_infer_core import ModelPrice, PriceTable

__all__ = ["PRICES"]


def _claude(input_per_mtok: float, output_per_mtok: float) -> ModelPrice:
    return ModelPrice(
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cached_input_per_mtok=round(input_per_mtok * 0.1, 6),
        cache_write_per_mtok=round(input_per_mtok * 1.25, 6),
    )


PRICES = PriceTable(
    {
        # Claude 4.x
        "claude-opus-4-6": _claude(5.00, 25.00),
        "claude-opus-4-5": _claude(5.00, 25.00),
        "claude-opus-4-1": _claude(15.00, 75.00),
        "claude-opus-4": _claude(15.00, 75.00),
        "claude-sonnet-4-6": _claude(3.00, 15.00),
        "claude-sonnet-4-5": _claude(3.00, 15.00),
        "claude-sonnet-4": _claude(3.00, 15.00),
        "claude-haiku-4-5": _claude(1.00, 5.00),
        # Claude 3.x
        "claude-3-7-sonnet": _claude(3.00, 15.00),
        "claude-3-5-sonnet": _claude(3.00, 15.00),
        "claude-3-5-haiku": _claude(0.80, 4.00),
        "claude-3-opus": _claude(15.00, 75.00),
        "claude-3-haiku": _claude(0.25, 1.25),
    }
)
