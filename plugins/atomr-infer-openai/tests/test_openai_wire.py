"""OpenAI wire mapping: request bodies, parsing, error refinement, prices (no I/O)."""

from __future__ import annotations

import json

import pytest

from atomr_infer_core import (
    ExecuteBatch,
    FinishReason,
    ImageBase64Part,
    ImageUrlPart,
    Message,
    SamplingParams,
    Secret,
    TextPart,
    TokenUsage,
)
from atomr_infer_core.config import structure
from atomr_infer_core.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
)
from atomr_infer_openai import OPENAI_PRICES, OpenAIConfig, OpenAIProvider, message_json
from atomr_infer_remote import SSEEvent


def _provider(**config: object) -> OpenAIProvider:
    return OpenAIProvider(config=structure(config, OpenAIConfig), model="gpt-4o-mini")


def _chat(**kw: object) -> ExecuteBatch:
    kw.setdefault("messages", [Message(role="user", content="hi")])
    return ExecuteBatch(request_id="r", model="chat", **kw)  # type: ignore[arg-type]


def test_every_sampling_field_is_sent() -> None:
    sampling = SamplingParams(
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        max_tokens=64,
        stop=["\n\n", "END"],
        presence_penalty=0.1,
        frequency_penalty=-0.2,
        seed=7,
        n=2,
        logprobs=True,
        top_logprobs=3,
    )
    req = _provider(send_top_k=True).build_request(_chat(sampling=sampling), None)
    assert req.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "max_tokens": 64,
        "stop": ["\n\n", "END"],
        "presence_penalty": 0.1,
        "frequency_penalty": -0.2,
        "seed": 7,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 3,
    }


def test_reasoning_models_get_max_completion_tokens_and_no_top_k() -> None:
    provider = OpenAIProvider(config=OpenAIConfig(), model="o3-mini")
    body = provider.build_request(_chat(sampling=SamplingParams(max_tokens=5, top_k=3)), None).json
    assert body["max_completion_tokens"] == 5
    assert "max_tokens" not in body and "top_k" not in body


def test_streams_always_ask_for_usage() -> None:
    req = _provider().build_request(_chat(stream=True), None)
    assert req.stream
    assert req.json["stream"] is True
    assert req.json["stream_options"] == {"include_usage": True}


def test_content_parts_images_and_tools() -> None:
    message = Message(
        role="user",
        content=[
            TextPart(text="what is this?"),
            ImageUrlPart(url="https://x/cat.png", detail="low"),
            ImageBase64Part(mime="image/png", data="iVBOR"),
        ],
    )
    assert message_json(message) == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        ],
    }
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert message_json(Message(role="assistant", tool_calls=[call])) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [call],
    }
    assert message_json(Message(role="tool", content="42", tool_call_id="c1")) == {
        "role": "tool",
        "content": "42",
        "tool_call_id": "c1",
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = _provider().build_request(_chat(tools=tools, tool_choice="auto", user="u1"), None).json
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    assert body["user"] == "u1"


def test_headers_direct_and_azure() -> None:
    direct = _provider(organization="org", project="prj", extra_headers={"x-a": "1"})
    req = direct.build_request(_chat(), Secret("sk"))
    assert req.url == "https://api.openai.com/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk"
    assert req.headers["openai-organization"] == "org"
    assert req.headers["openai-project"] == "prj"
    assert req.headers["x-a"] == "1"
    azure = _provider(azure_endpoint="https://res.openai.azure.com/", azure_deployment="dep")
    req = azure.build_request(_chat(), Secret("az"))
    assert req.url == (
        "https://res.openai.azure.com/openai/deployments/dep/chat/completions"
        "?api-version=2024-10-21"
    )
    assert req.headers["api-key"] == "az" and "authorization" not in req.headers
    bearer = _provider(azure_endpoint="https://res.openai.azure.com", azure_auth="bearer")
    assert bearer.build_request(_chat(), Secret("tok")).headers["authorization"] == "Bearer tok"
    assert "sk" not in repr(req)


def test_completion_and_embedding_bodies() -> None:
    provider = _provider()
    batch = ExecuteBatch(
        request_id="r",
        model="m",
        kind="completion",
        prompt="once",
        sampling=SamplingParams(max_tokens=3),
    )
    req = provider.build_request(batch, None)
    assert req.url.endswith("/completions")
    assert req.json == {"model": "gpt-4o-mini", "prompt": "once", "max_tokens": 3}
    batch = ExecuteBatch(request_id="r", model="m", kind="embedding", inputs=["a"], dimensions=4)
    req = provider.build_request(batch, None)
    assert req.url.endswith("/embeddings")
    assert req.json == {
        "model": "gpt-4o-mini",
        "input": ["a"],
        "encoding_format": "float",
        "dimensions": 4,
    }


def _event(obj: object) -> SSEEvent:
    return SSEEvent(data=obj if isinstance(obj, str) else json.dumps(obj))


def test_stream_parser_text_tools_usage_and_done() -> None:
    parser = _provider().stream_parser(_chat(stream=True))
    assert parser.feed(_event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})) == []
    (chunk,) = parser.feed(_event({"choices": [{"index": 1, "delta": {"content": "hi"}}]}))
    assert (chunk.text_delta, chunk.index, chunk.request_id) == ("hi", 1, "r")
    tool = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{"}}
    (chunk,) = parser.feed(_event({"choices": [{"index": 0, "delta": {"tool_calls": [tool]}}]}))
    assert chunk.tool_call_deltas == (tool,)
    (chunk,) = parser.feed(
        _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    )
    assert chunk.finish_reason is FinishReason.TOOL_CALLS
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    (chunk,) = parser.feed(_event({"choices": [], "usage": usage}))
    assert chunk.usage == TokenUsage(
        input_tokens=10, output_tokens=5, cached_tokens=4, reasoning_tokens=2
    )
    assert not parser.finished
    assert parser.feed(_event("[DONE]")) == ()
    assert parser.finished


def test_stream_error_events_are_classified() -> None:
    parser = _provider().stream_parser(_chat(stream=True))
    with pytest.raises(ServerError):
        parser.feed(_event({"error": {"message": "boom", "type": "server_error"}}))
    with pytest.raises(RateLimitedError):
        parser.feed(_event({"error": {"message": "slow down", "type": "rate_limit_error"}}))
    with pytest.raises(ValueError):
        parser.feed(_event("{not json"))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {"error": {"message": "too long", "code": "context_length_exceeded"}},
            ContextLengthExceededError,
        ),
        ({"error": {"message": "filtered", "code": "content_filter"}}, ContentFilteredError),
        ({"error": {"message": "no money", "type": "insufficient_quota"}}, QuotaExceededError),
    ],
)
def test_error_bodies_are_refined(body: object, error: type) -> None:
    assert isinstance(_provider().refine_error(400, body), error)


def test_unknown_error_bodies_fall_through() -> None:
    assert _provider().refine_error(400, {"error": {"message": "bad", "code": "x"}}) is None
    assert _provider().refine_error(500, "plain text") is None


def test_prices_match_dated_ids() -> None:
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert OPENAI_PRICES.cost("gpt-4o-2024-08-06", usage) == pytest.approx(12.50)
    assert OPENAI_PRICES.cost("gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.75)
    assert OPENAI_PRICES.cost("gpt-4o-2024-05-13", usage) == pytest.approx(20.00)
    assert OPENAI_PRICES.cost("gpt-4.1-nano-2025-04-14", usage) == pytest.approx(0.50)
    assert OPENAI_PRICES.cost("o3-mini-2025-01-31", usage) == pytest.approx(5.50)
    assert OPENAI_PRICES.cost("gpt-5-mini-2025-08-07", usage) == pytest.approx(2.25)
    assert OPENAI_PRICES.cost("text-embedding-3-small", usage) == pytest.approx(0.02)
    cached = TokenUsage(input_tokens=1_000_000, cached_tokens=1_000_000)
    assert OPENAI_PRICES.cost("gpt-4o", cached) == pytest.approx(1.25)
    assert OPENAI_PRICES.cost("llama-3", usage) is None
