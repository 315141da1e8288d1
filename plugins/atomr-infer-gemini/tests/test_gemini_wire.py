"""Table tests of the Gemini wire format: URLs, batches → bodies, answers → chunks, errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

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
    ContentFilteredError,
    ContextLengthExceededError,
    ForbiddenError,
    MalformedStreamError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
)
from atomr_infer_gemini import PRICES
from atomr_infer_gemini._wire import (
    ResponseState,
    _ContentStream,
    ai_studio_url,
    build_request_body,
    error_from_payload,
    map_finish_reason,
    refine_error,
    vertex_url,
)
from atomr_infer_remote import SSEDecoder, SSEEvent


def chat(*messages: Message, **kw: object) -> ExecuteBatch:
    return ExecuteBatch(request_id="r1", model="gemini-x", messages=messages, **kw)


# --------------------------------------------------------------------------- URLs


def test_ai_studio_urls() -> None:
    base = "https://generativelanguage.googleapis.com/v1beta/"
    assert ai_studio_url(base, "gemini-2.5-flash", stream=False) == (
        base + "models/gemini-2.5-flash:generateContent"
    )
    assert ai_studio_url(base.rstrip("/"), "models/gemini-2.5-flash", stream=True) == (
        base + "models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )


def test_vertex_urls_regional_global_and_override() -> None:
    assert vertex_url("proj", "europe-west4", "gemini-2.5-pro", stream=False) == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj/locations/"
        "europe-west4/publishers/google/models/gemini-2.5-pro:generateContent"
    )
    assert vertex_url("proj", "global", "gemini-2.5-pro", stream=True) == (
        "https://aiplatform.googleapis.com/v1/projects/proj/locations/global/"
        "publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    )
    assert vertex_url("p", "us-central1", "m", stream=False, endpoint="http://127.0.0.1:9/") == (
        "http://127.0.0.1:9/v1/projects/p/locations/us-central1/publishers/google/models/m"
        ":generateContent"
    )


# --------------------------------------------------------------------------- requests


def test_system_instruction_roles_and_generation_config() -> None:
    sampling = SamplingParams(
        temperature=0.2, top_p=0.8, top_k=20, max_tokens=64, stop=["END"], seed=3, n=2
    )
    body = build_request_body(
        chat(
            Message(role="system", content="Be brief."),
            Message(role="user", content="hi"),
            Message(role="assistant", content="hello"),
            Message(role="user", content="again"),
            sampling=sampling,
        ),
        safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
    )
    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "again"}]},
        ],
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.8,
            "topK": 20,
            "maxOutputTokens": 64,
            "seed": 3,
            "stopSequences": ["END"],
            "candidateCount": 2,
        },
        "safetySettings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
        ],
    }


def test_images_inline_and_file_data_with_guessed_mime() -> None:
    content = (
        TextPart(text="what?"),
        ImageBase64Part(mime="image/png", data="AAAA"),
        ImageUrlPart(url="data:image/webp;base64,BBBB"),
        ImageUrlPart(url="gs://bucket/cat.png"),
        ImageUrlPart(url="https://example.com/pic"),
    )
    body = build_request_body(chat(Message(role="user", content=content)))
    assert body["contents"][0]["parts"] == [
        {"text": "what?"},
        {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
        {"inlineData": {"mimeType": "image/webp", "data": "BBBB"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/pic"}},
    ]


def test_tools_calls_and_function_responses() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": {"type": "object"}},
        }
    ]
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    body = build_request_body(
        chat(
            Message(role="user", content="weather?"),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", content='{"temp": -3}', tool_call_id="c1"),
            Message(role="tool", content="plain text", tool_call_id="c1"),
            tools=tools,
            tool_choice="required",
            response_format={"type": "json_object"},
        )
    )
    assert body["tools"] == [
        {"functionDeclarations": [{"name": "weather", "parameters": {"type": "object"}}]}
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body["generationConfig"] == {"responseMimeType": "application/json"}
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": -3}}},
                {"functionResponse": {"name": "weather", "response": {"content": "plain text"}}},
            ],
        },
    ]


def test_embeddings_are_refused() -> None:
    with pytest.raises(BadRequestError):
        build_request_body(ExecuteBatch(request_id="r", model="m", kind="embedding", inputs=["a"]))


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("OTHER", FinishReason.STOP),
        ("FINISH_REASON_UNSPECIFIED", None),
        (None, None),
    ],
)
def test_finish_reasons(reason: str | None, expected: FinishReason | None) -> None:
    assert map_finish_reason(reason) is expected


def test_json_answer_with_usage_thoughts_and_cache() -> None:
    payload = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "thinking...", "thought": True},
                        {"text": "Hi "},
                        {"text": "there"},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}
                ],
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 120,
            "candidatesTokenCount": 2,
            "cachedContentTokenCount": 100,
            "thoughtsTokenCount": 30,
            "totalTokenCount": 152,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    assert ResponseState(request_id="r1").feed(payload) == [
        TokenChunk(
            request_id="r1",
            text_delta="Hi there",
            finish_reason=FinishReason.STOP,
            usage=TokenUsage(
                input_tokens=120, output_tokens=32, reasoning_tokens=30, cached_tokens=100
            ),
        )
    ]


def test_stream_events_with_two_candidates_and_a_function_call() -> None:
    state = ResponseState(request_id="r1")
    events = [
        {
            "candidates": [
                {"content": {"parts": [{"text": "A"}]}, "index": 0},
                {"content": {"parts": [{"text": "B"}]}, "index": 1},
            ]
        },
        {
            "candidates": [
                {
                    "content": {"parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]},
                    "index": 0,
                    "finishReason": "STOP",
                },
                {"content": {"parts": [{"text": "b"}]}, "index": 1, "finishReason": "MAX_TOKENS"},
            ],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3},
        },
    ]
    chunks = [c for e in events for c in state.feed_text(json.dumps(e))]
    tokens = Tokens.from_chunks(chunks)
    assert [c.text for c in tokens.choices] == ["A", "Bb"]
    assert tokens.choices[0].finish_reason is FinishReason.TOOL_CALLS
    assert tokens.choices[1].finish_reason is FinishReason.LENGTH
    assert tokens.choices[0].tool_calls == (
        {
            "id": "call_r1_0_0",
            "type": "function",
            "function": {"name": "f", "arguments": '{"x":1}'},
        },
    )
    assert tokens.usage == TokenUsage(input_tokens=4, output_tokens=3)


def test_blocked_prompt_is_content_filtered() -> None:
    payload = {
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 3},
    }
    with pytest.raises(ContentFilteredError) as info:
        ResponseState().feed(payload)
    assert info.value.reason == "SAFETY"


def test_safety_finish_is_a_content_filter_finish_not_an_error() -> None:
    payload = {"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": []}]}
    [chunk] = ResponseState().feed(payload)
    assert chunk.finish_reason is FinishReason.CONTENT_FILTER
    assert chunk.text_delta == ""


def test_error_event_inside_a_stream_and_garbage() -> None:
    state = ResponseState()
    event = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    with pytest.raises(ServerError) as info:
        state.feed_text(json.dumps(event))
    assert info.value.retryable and info.value.status == 503
    with pytest.raises(MalformedStreamError):
        state.feed_text('{"candidates": [')
    assert state.feed_text("  ") == []
    weird = error_from_payload({"code": 499, "message": "cancelled", "status": "CANCELLED"})
    assert isinstance(weird, ServerError)


# --------------------------------------------------------------------------- errors


def google_error(code: int, status: str, message: str, details: list[object] | None = None) -> str:
    error: dict[str, object] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return json.dumps({"error": error})


def test_resource_exhausted_is_rate_limited_with_retry_info() -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]
    error = refine_error(429, google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", details))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 17.0
    header_wins = refine_error(
        429, google_error(429, "RESOURCE_EXHAUSTED", "q", details), retry_after=2.0
    )
    assert header_wins is not None and header_wins.retry_after == 2.0


def test_token_limit_is_context_length() -> None:
    message = (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    )
    error = refine_error(400, google_error(400, "INVALID_ARGUMENT", message))
    assert isinstance(error, ContextLengthExceededError)
    assert (error.tokens, error.max_tokens) == (1200000, 1048576)


@pytest.mark.parametrize(
    ("status", "code", "details", "cls"),
    [
        (403, "PERMISSION_DENIED", None, ForbiddenError),
        (401, "UNAUTHENTICATED", None, UnauthorizedError),
        (
            400,
            "INVALID_ARGUMENT",
            [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
            UnauthorizedError,
        ),
        (400, "INVALID_ARGUMENT", None, BadRequestError),
        (404, "NOT_FOUND", None, NotFoundError),
        (503, "UNAVAILABLE", None, ServerError),
        (500, "INTERNAL", None, ServerError),
    ],
)
def test_refinement_by_status(
    status: int, code: str, details: list[object] | None, cls: type[Exception]
) -> None:
    assert isinstance(refine_error(status, google_error(status, code, "msg", details)), cls)


def test_unparseable_bodies_fall_back_and_list_bodies_are_unwrapped() -> None:
    assert refine_error(502, "<html>") is None
    assert refine_error(418, google_error(418, "TEAPOT", "x")) is None
    listed = json.dumps([{"error": {"code": 429, "message": "q", "status": "RESOURCE_EXHAUSTED"}}])
    assert isinstance(refine_error(429, listed), RateLimitedError)


@given(st.text(max_size=200))
def test_refine_error_never_raises(text: str) -> None:
    refine_error(400, text)


# --------------------------------------------------------------------------- prices


@pytest.mark.parametrize(
    ("model", "input_rate", "output_rate"),
    [
        ("gemini-2.5-pro", 1.25, 10.0),
        ("gemini-2.5-flash-preview-05-20", 0.30, 2.50),
        ("gemini-2.5-flash-lite", 0.10, 0.40),
        ("gemini-2.0-flash-001", 0.10, 0.40),
        ("gemini-2.0-flash-lite-001", 0.075, 0.30),
        ("gemini-1.5-pro-002", 1.25, 5.0),
        ("models/gemini-2.5-pro", 1.25, 10.0),
    ],
)
def test_prices_match_versioned_ids(model: str, input_rate: float, output_rate: float) -> None:
    price = PRICES.lookup(model)
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (input_rate, output_rate)


def test_thoughts_are_billed_as_output_and_cache_at_the_cached_rate() -> None:
    usage = TokenUsage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        reasoning_tokens=500_000,
        cached_tokens=500_000,
    )
    # 500k uncached at $1.25 + 500k cached at $0.125 + 1M output at $10
    assert PRICES.cost("gemini-2.5-pro", usage) == pytest.approx(0.625 + 0.0625 + 10.0)


# --------------------------------------------------------------------------- byte splits

STREAM_EVENTS = [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Echo:"}]}, "index": 0}]},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": " hi"}]}, "index": 0}]},
    {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "!"}]},
                "index": 0,
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3},
    },
]


@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=10), st.booleans())
def test_any_byte_split_of_a_stream_gives_the_same_answer(cuts: list[int], crlf: bool) -> None:

    sep = "\r\n" if crlf else "\n"
    body = "".join(f"data: {json.dumps(e)}{sep}{sep}" for e in STREAM_EVENTS).encode()
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    decoder = SSEDecoder()
    parser = _ContentStream(ResponseState(request_id="r1"))
    chunks: list[TokenChunk] = []
    for piece in pieces:
        for event in decoder.receive_data(piece):
            chunks += parser.feed(event)
    for event in decoder.close():
        chunks += parser.feed(event)
    assert parser.end() == []
    tokens = Tokens.from_chunks(chunks)
    assert tokens.text == "Echo: hi!"
    assert tokens.finish_reason is FinishReason.STOP
    assert tokens.usage == TokenUsage(input_tokens=2, output_tokens=3)


def test_a_stream_cut_before_a_finish_reason_is_malformed() -> None:

    parser = _ContentStream(ResponseState())
    parser.feed(SSEEvent(data=json.dumps(STREAM_EVENTS[0])))
    with pytest.raises(MalformedStreamError):
        parser.end()
