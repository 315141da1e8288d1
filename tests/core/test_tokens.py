from __future__ import annotations

from hypothesis import given, strategies as st

from atomr_infer_core import FinishReason, TokenChunk, Tokens, TokensBuilder, TokenUsage

usage_st = st.builds(
    TokenUsage,
    input_tokens=st.integers(0, 10_000),
    output_tokens=st.integers(0, 10_000),
    reasoning_tokens=st.integers(0, 100),
    cached_tokens=st.integers(0, 100),
)
chunk_st = st.builds(
    TokenChunk,
    request_id=st.just("r1"),
    text_delta=st.text(max_size=5),
    index=st.integers(0, 2),
    usage=st.none() | usage_st,
    finish_reason=st.none() | st.sampled_from(FinishReason),
)


@given(st.lists(chunk_st, max_size=30))
def test_tokens_aggregation(chunks: list[TokenChunk]) -> None:
    tokens = Tokens.from_chunks(chunks)
    for index in {c.index for c in chunks}:
        mine = [c for c in chunks if c.index == index]
        choice = next(ch for ch in tokens.choices if ch.index == index)
        assert choice.text == "".join(c.text_delta for c in mine)
        finishes = [c.finish_reason for c in mine if c.finish_reason is not None]
        assert choice.finish_reason == (finishes[-1] if finishes else None)
    reported = [c.usage for c in chunks if c.usage is not None]
    # usage is cumulative: the last report wins, never the sum
    assert tokens.usage == (reported[-1] if reported else TokenUsage())
    assert [ch.index for ch in tokens.choices] == sorted({c.index for c in chunks})


def test_usage_is_never_double_counted() -> None:
    u1 = TokenUsage(input_tokens=10, output_tokens=0)
    u2 = TokenUsage(input_tokens=10, output_tokens=7)
    tokens = Tokens.from_chunks(
        [
            TokenChunk(text_delta="a", usage=u1),
            TokenChunk(text_delta="b"),
            TokenChunk(usage=u2, finish_reason=FinishReason.STOP),
        ]
    )
    assert tokens.text == "ab"
    assert tokens.usage == u2
    assert tokens.usage.total_tokens == 17
    assert tokens.finish_reason is FinishReason.STOP


def test_tool_call_deltas_merge_in_openai_shape() -> None:
    builder = TokensBuilder()
    builder.add(
        TokenChunk(
            tool_call_deltas=(
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_", "arguments": ""},
                },
            )
        )
    )
    builder.add(
        TokenChunk(
            tool_call_deltas=(
                {"index": 0, "function": {"name": "weather", "arguments": '{"city":'}},
            )
        )
    )
    builder.add(
        TokenChunk(
            tool_call_deltas=({"index": 0, "function": {"arguments": '"Paris"}'}},),
            finish_reason=FinishReason.TOOL_CALLS,
        )
    )
    tokens = builder.build(deployment="d")
    assert tokens.choices[0].tool_calls == (
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
    )
    assert tokens.deployment == "d"


def test_embeddings_concatenate_in_order() -> None:
    tokens = Tokens.from_chunks(
        [TokenChunk(embeddings=((1.0, 0.0),)), TokenChunk(embeddings=((0.0, 1.0),))]
    )
    assert tokens.embeddings == ((1.0, 0.0), (0.0, 1.0))
    assert tokens.text == ""


def test_usage_addition() -> None:
    total = TokenUsage(input_tokens=1, output_tokens=2, cached_tokens=1) + TokenUsage(
        input_tokens=3, reasoning_tokens=4
    )
    assert total == TokenUsage(input_tokens=4, output_tokens=2, reasoning_tokens=4, cached_tokens=1)
