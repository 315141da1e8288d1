from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from atomr_infer_core import ModelPrice, PriceTable, TokenUsage

TABLE = PriceTable(
    {
        "gpt-4o": ModelPrice(input_per_mtok=2.5, output_per_mtok=10.0, cached_input_per_mtok=1.25),
        "gpt-4o-mini": ModelPrice(input_per_mtok=0.15, output_per_mtok=0.6),
        "claude-3-5-sonnet": ModelPrice(
            input_per_mtok=3.0, output_per_mtok=15.0, cache_write_per_mtok=3.75
        ),
    }
)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai/gpt-4o", "gpt-4o"),
        ("GPT-4O", "gpt-4o"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet@20241022", "claude-3-5-sonnet"),
        ("gpt-4oz", None),
        ("gpt-4", None),
        ("llama", None),
    ],
)
def test_lookup_matches_dated_ids_by_longest_prefix(model: str, key: str | None) -> None:
    expected = None if key is None else TABLE.prices[key]
    assert TABLE.lookup(model) is expected


def test_cost_bills_cached_and_output_tokens() -> None:
    usage = TokenUsage(
        input_tokens=1_000_000,
        cached_tokens=400_000,
        output_tokens=100_000,
        reasoning_tokens=50_000,
    )
    # 600k uncached at 2.5 + 400k cached at 1.25 + 100k out at 10 (reasoning is part of output)
    assert TABLE.cost("gpt-4o-2024-08-06", usage) == pytest.approx(1.5 + 0.5 + 1.0)
    assert TABLE.cost("unknown", usage) is None


def test_cache_writes_are_billed_at_their_rate() -> None:
    usage = TokenUsage(input_tokens=1000, cache_creation_tokens=1_000_000)
    assert TABLE.cost("claude-3-5-sonnet", usage) == pytest.approx(0.003 + 3.75)


@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_worst_case_bounds_the_real_cost(
    inp: int, out: int, cached: int, rin: float, rout: float
) -> None:
    price = ModelPrice(input_per_mtok=rin, output_per_mtok=rout, cached_input_per_mtok=rin / 2)
    usage = TokenUsage(input_tokens=inp, output_tokens=out, cached_tokens=min(cached, inp))
    assert price.cost(usage) <= price.worst_case(inp, out) + 1e-9


def test_negative_prices_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"input_per_mtok: must be >= 0\.0"):
        ModelPrice(input_per_mtok=-1, output_per_mtok=0)
