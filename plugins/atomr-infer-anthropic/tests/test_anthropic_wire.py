"""Table tests of the Anthropic wire format: batches → bodies, answers → chunks, errors."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, strategies as st

from atomr_infer_anthropic import PRICES
from atomr_infer_anthropic._wire import (
    StreamState,
    _MessageStream,
    build_request_body,
    error_for,
    map_stop_reason,
    parse_message,
    refine_error,
)
from atomr_infer_core import (
    ExecuteBatch,
    FinishReason,
    ImageBase64Part,
    ImageUrlPart,
    Message,
    SamplingParams,
    TextPart,
    TokenChunk,
    Tokens,
    TokenUsage,
)
from atomr_infer_core.errors import (
    BadRequestError,
    ContextLengthExceededError,
    ForbiddenError,
    MalformedStreamError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
)
from atomr_infer_remote import SSEDecoder, SSEEvent


def chat(*messages: Message, **kw: object) -> ExecuteBatch:
    return ExecuteBatch(request_id="r1", model="claude-x", messages=messages, **kw)


# --------------------------------------------------------------------------- requests


def test_system_messages_are_hoisted_and_max_tokens_defaults() -> None:
    body = build_request_body(
        chat(
            Message(role="system", content="Be brief."),
            Message(role="developer", content="Use English."),
            Message(role="user", content="hi"),
        ),
        model="claude-sonnet-4-5",
    )
    assert body == {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.\nUse English.",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4096,
    }


def test_sampling_fields_are_sent_and_default_max_tokens_is_configurable() -> None:
    sampling = SamplingParams(temperature=0.5, top_p=0.9, top_k=40, stop=["END"], seed=7)
    body = build_request_body(
        chat(Message(role="user", content="hi"), sampling=sampling, stream=True, user="u-1"),
        model="m",
        default_max_tokens=1024,
    )
    assert body["temperature"] == 0.5
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40
    assert body["stop_sequences"] == ["END"]
    assert body["stream"] is True
    assert body["max_tokens"] == 1024
    assert body["metadata"] == {"user_id": "u-1"}
    assert "seed" not in body  # Anthropic has no seed


def test_images_base64_data_url_and_url_sources() -> None:
    content = (
        TextPart(text="what is this?"),
        ImageBase64Part(mime="image/png", data="AAAA"),
        ImageUrlPart(url="data:image/webp;base64,BBBB"),
        ImageUrlPart(url="https://example.com/cat.jpg"),
    )
    body = build_request_body(chat(Message(role="user", content=content)), model="m")
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/webp", "data": "BBBB"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tools_tool_calls_and_results_translate_to_anthropic_blocks() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    call = {
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
    }
    body = build_request_body(
        chat(
            Message(role="user", content="weather in Oslo?"),
            Message(role="assistant", content="", tool_calls=[call]),
            Message(role="tool", content="-3C", tool_call_id="toolu_1"),
            Message(role="user", content="thanks"),
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "weather"}},
        ),
        model="m",
    )
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "weather"}
    assert body["messages"] == [
        {"role": "user", "content": "weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "-3C"}],
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
def test_tool_choice_strings(choice: str, expected: dict[str, str]) -> None:
    body = build_request_body(
        chat(Message(role="user", content="x"), tool_choice=choice), model="m"
    )
    assert body["tool_choice"] == expected


def test_n_above_one_and_bad_tool_arguments_are_bad_requests() -> None:
    with pytest.raises(BadRequestError) as info:
        build_request_body(
            chat(Message(role="user", content="x"), sampling=SamplingParams(n=2)), model="m"
        )
    assert info.value.param == "n"
    call = {"id": "t", "function": {"name": "f", "arguments": "[1, 2]"}}
    with pytest.raises(BadRequestError) as info:
        build_request_body(
            chat(Message(role="user", content="x"), Message(role="assistant", tool_calls=[call])),
            model="m",
        )
    assert info.value.param == "messages[1].tool_calls"


def test_completion_prompt_becomes_a_user_turn_and_extra_passes_through() -> None:
    batch = ExecuteBatch(
        request_id="r",
        model="m",
        kind="completion",
        prompt="Once upon",
        extra={"thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    body = build_request_body(batch, model="m")
    assert body["messages"] == [{"role": "user", "content": "Once upon"}]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("something_new", FinishReason.STOP),
        (None, None),
    ],
)
def test_stop_reasons(reason: str | None, expected: FinishReason | None) -> None:
    assert map_stop_reason(reason) is expected


def test_json_message_with_text_tool_use_and_cache_usage() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
        },
    }
    [chunk] = parse_message(body, request_id="r1")
    assert chunk == TokenChunk(
        request_id="r1",
        text_delta="Let me check.",
        reasoning_delta="hmm",  # thinking is reported apart from the answer
        tool_call_deltas=(
            {
                "index": 0,
                "id": "toolu_9",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
            },
        ),
        usage=TokenUsage(
            input_tokens=110, output_tokens=20, cached_tokens=100, cache_creation_tokens=50
        ),
        finish_reason=FinishReason.TOOL_CALLS,
    )


def sse(state: StreamState, *events: dict[str, object]) -> list[TokenChunk]:
    out: list[TokenChunk] = []
    for event in events:
        out += state.feed(str(event["type"]), json.dumps(event))
    return out


STREAM = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "usage": {
                "input_tokens": 25,
                "output_tokens": 1,
                "cache_read_input_tokens": 5,
                "cache_creation_input_tokens": 3,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {"type": "brand_new_event", "payload": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
]


def test_stream_lifts_text_tool_calls_and_merged_usage() -> None:
    state = StreamState(request_id="r1")
    chunks = sse(state, *STREAM)
    tokens = Tokens.from_chunks(chunks)
    assert tokens.text == "Hello world"
    assert tokens.finish_reason is FinishReason.TOOL_CALLS
    assert tokens.choices[0].tool_calls == (
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
        },
    )
    # message_start's input and cache counts survive message_delta's output count
    assert tokens.usage == TokenUsage(
        input_tokens=30, output_tokens=15, cached_tokens=5, cache_creation_tokens=3
    )
    assert [c.text_delta for c in chunks if c.text_delta] == ["Hello", " world"]


def test_message_delta_with_cumulative_input_counts_overrides_start() -> None:
    state = StreamState()
    sse(state, STREAM[0])
    [chunk] = sse(
        state,
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"input_tokens": 26, "output_tokens": 9, "cache_read_input_tokens": 5},
        },
    )
    assert chunk.usage == TokenUsage(
        input_tokens=31, output_tokens=9, cached_tokens=5, cache_creation_tokens=3
    )
    assert chunk.finish_reason is FinishReason.STOP


def test_empty_and_ping_events_yield_nothing_and_garbage_is_malformed() -> None:
    state = StreamState()
    assert state.feed("ping", '{"type": "ping"}') == []
    assert state.feed(None, "") == []
    with pytest.raises(MalformedStreamError):
        state.feed("content_block_delta", '{"type": "content_block_delta", "delta": ')


@pytest.mark.parametrize(
    ("error_type", "cls"),
    [
        ("overloaded_error", ServerError),
        ("api_error", ServerError),
        ("rate_limit_error", RateLimitedError),
        ("authentication_error", UnauthorizedError),
        ("permission_error", ForbiddenError),
        ("not_found_error", NotFoundError),
        ("billing_error", QuotaExceededError),
        ("invalid_request_error", BadRequestError),
        ("future_error", ServerError),
    ],
)
def test_mid_stream_error_events_are_classified(error_type: str, cls: type[Exception]) -> None:
    state = StreamState()
    event = {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    with pytest.raises(cls) as info:
        state.feed("error", json.dumps(event))
    if error_type == "overloaded_error":
        assert info.value.status == 529
        assert info.value.retryable


# --------------------------------------------------------------------------- errors


def body(error_type: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def test_prompt_too_long_is_context_length_with_counts() -> None:
    error = refine_error(
        400, body("invalid_request_error", "prompt is too long: 201234 tokens > 200000 maximum")
    )
    assert isinstance(error, ContextLengthExceededError)
    assert (error.tokens, error.max_tokens) == (201234, 200000)
    error = refine_error(
        400,
        body(
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 188240 + 21333 > 200000",
        ),
    )
    assert isinstance(error, ContextLengthExceededError)
    assert (error.tokens, error.max_tokens) == (209573, 200000)


def test_refinement_by_error_type() -> None:
    assert isinstance(refine_error(403, body("permission_error", "no")), ForbiddenError)
    overloaded = refine_error(529, body("overloaded_error", "Overloaded"))
    assert isinstance(overloaded, ServerError)
    assert overloaded.status == 529
    limited = refine_error(429, body("rate_limit_error", "slow down"), retry_after=7.0)
    assert isinstance(limited, RateLimitedError)
    assert limited.retry_after == 7.0
    # without a header value the status table reads Retry-After itself
    assert refine_error(429, json.loads(body("rate_limit_error", "slow down"))) is None
    assert isinstance(refine_error(400, body("invalid_request_error", "bad")), BadRequestError)


def test_unparseable_or_unknown_bodies_fall_back_to_the_status_table() -> None:
    assert refine_error(502, "<html>bad gateway</html>") is None
    assert refine_error(400, '{"message": "no error key"}') is None
    assert refine_error(418, body("teapot_error", "short and stout")) is None
    assert isinstance(error_for({"type": "teapot_error"}), ServerError)


@given(st.text(max_size=200))
def test_refine_error_never_raises(text: str) -> None:
    refine_error(400, text)


# --------------------------------------------------------------------------- prices


@pytest.mark.parametrize(
    ("model", "input_rate", "output_rate"),
    [
        ("claude-sonnet-4-5-20250929", 3.0, 15.0),
        ("claude-opus-4-1-20250805", 15.0, 75.0),
        ("claude-opus-4-5-20251101", 5.0, 25.0),
        ("claude-opus-4-20250514", 15.0, 75.0),
        ("claude-haiku-4-5-20251001", 1.0, 5.0),
        ("claude-3-5-haiku-latest", 0.8, 4.0),
        ("claude-3-haiku-20240307", 0.25, 1.25),
        ("anthropic/claude-sonnet-4-20250514", 3.0, 15.0),
    ],
)
def test_prices_match_dated_ids(model: str, input_rate: float, output_rate: float) -> None:
    price = PRICES.lookup(model)
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (input_rate, output_rate)


def test_cache_reads_and_writes_are_priced() -> None:
    usage = TokenUsage(
        input_tokens=1_100_000,
        output_tokens=0,
        cached_tokens=1_000_000,
        cache_creation_tokens=1_000_000,
    )
    # 100k uncached at $3 + 1M reads at $0.30 + 1M writes at $3.75
    assert PRICES.cost("claude-sonnet-4-5-20250929", usage) == pytest.approx(0.3 + 0.3 + 3.75)


# --------------------------------------------------------------------------- byte splits


def _sse_body(events: list[dict[str, object]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_any_byte_split_of_a_stream_gives_the_same_answer(cuts: list[int]) -> None:

    body = _sse_body(STREAM)
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    decoder = SSEDecoder()
    parser = _MessageStream(StreamState(request_id="r1"))
    chunks: list[TokenChunk] = []
    for piece in pieces:
        for event in decoder.receive_data(piece):
            chunks += parser.feed(event)
    for event in decoder.close():
        chunks += parser.feed(event)
    assert parser.finished
    tokens = Tokens.from_chunks(chunks)
    assert tokens.text == "Hello world"
    assert tokens.usage == TokenUsage(
        input_tokens=30, output_tokens=15, cached_tokens=5, cache_creation_tokens=3
    )
    assert tokens.choices[0].tool_calls[0]["function"]["arguments"] == '{"city":"Oslo"}'


def test_a_stream_cut_before_the_stop_reason_is_malformed_after_it_complete() -> None:

    cut = _MessageStream(StreamState())
    for event in STREAM[:5]:
        cut.feed(SSEEvent(event=str(event["type"]), data=json.dumps(event)))
    with pytest.raises(MalformedStreamError):
        cut.end()
    complete = _MessageStream(StreamState())
    for event in STREAM[:-1]:  # no message_stop (a proxy dropped it)
        complete.feed(SSEEvent(event=str(event["type"]), data=json.dumps(event)))
    assert not complete.finished
    assert complete.end() == []


def test_response_format_json_schema_becomes_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    batch = ExecuteBatch(
        request_id="r",
        model="m",
        messages=(Message(role="user", content="x"),),
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    body = build_request_body(batch, model="claude")
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    json_mode = attrs.evolve(batch, response_format={"type": "json_object"})
    assert build_request_body(json_mode, model="claude")["output_config"]["format"] == {
        "type": "json_schema",
        "schema": {"type": "object"},
    }


def test_thinking_is_reported_as_reasoning_not_answer() -> None:
    state = StreamState(request_id="r")
    delta = {"type": "thinking_delta", "thinking": "hmm"}
    [chunk] = state.feed(
        "content_block_delta",
        json.dumps({"type": "content_block_delta", "index": 0, "delta": delta}),
    )
    assert (chunk.reasoning_delta, chunk.text_delta) == ("hmm", "")
    body = {
        "content": [
            {"type": "thinking", "thinking": "first", "signature": "s"},
            {"type": "text", "text": "answer"},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    [whole] = parse_message(body)
    assert (whole.reasoning_delta, whole.text_delta) == ("first", "answer")
