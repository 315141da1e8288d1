"""Price tables and the cost of a ``TokenUsage``."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._tokens import TokenUsage
from ._validators import at_least

__all__ = ["ModelPrice", "PriceTable"]

_SEPARATORS = ("-", ":", "@", ".")


@attrs.frozen(kw_only=True)
class ModelPrice:
    """US dollars per million tokens."""

    input_per_mtok: float = attrs.field(validator=at_least(0.0))
    output_per_mtok: float = attrs.field(validator=at_least(0.0))
    #: price of cache-hit input tokens; ``None`` bills them as ordinary input
    cached_input_per_mtok: float | None = None
    #: price of cache writes (Anthropic); ``None`` bills them as ordinary input
    cache_write_per_mtok: float | None = None

    def cost(self, usage: TokenUsage) -> float:
        """The cost of ``usage`` in USD. Reasoning tokens are part of output."""
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.input_per_mtok
        if self.cached_input_per_mtok is not None:
            cached_rate = self.cached_input_per_mtok
        write_rate = self.cache_write_per_mtok
        if write_rate is None:
            write_rate = self.input_per_mtok
        usd = (usage.input_tokens - cached) * self.input_per_mtok
        usd += cached * cached_rate
        usd += usage.cache_creation_tokens * write_rate
        usd += usage.output_tokens * self.output_per_mtok
        return usd / 1_000_000

    def worst_case(self, input_tokens: int, max_output_tokens: int) -> float:
        """The most a request can cost: every input token uncached, every output used."""
        return (
            input_tokens * self.input_per_mtok + max_output_tokens * self.output_per_mtok
        ) / 1_000_000


def _freeze(prices: Mapping[str, ModelPrice]) -> Mapping[str, ModelPrice]:
    return {k.lower(): v for k, v in prices.items()}


@attrs.frozen
class PriceTable:
    """Model id → price, matched by the longest prefix that ends at a separator.

    ``gpt-4o-2024-08-06`` prices as ``gpt-4o``; ``gpt-4o-mini-2024-07-18`` as
    ``gpt-4o-mini`` (longer prefix wins); ``openai/gpt-4o`` as ``gpt-4o``.
    """

    prices: Mapping[str, ModelPrice] = attrs.field(converter=_freeze, factory=dict)

    def lookup(self, model: str) -> ModelPrice | None:
        name = model.strip().lower()
        for candidate in (name, name.rsplit("/", 1)[-1]):
            best: str | None = None
            for key in self.prices:
                if candidate == key or (
                    candidate.startswith(key) and candidate[len(key)] in _SEPARATORS
                ):
                    if best is None or len(key) > len(best):
                        best = key
            if best is not None:
                return self.prices[best]
        return None

    def cost(self, model: str, usage: TokenUsage) -> float | None:
        """Cost of ``usage`` for ``model`` in USD, or ``None`` when the model is unpriced."""
        price = self.lookup(model)
        return None if price is None else price.cost(usage)

    def merged(self, other: PriceTable) -> PriceTable:
        return PriceTable({**self.prices, **other.prices})
