"""The gemini runner against the testkit's mock Gemini server over real loopback HTTP."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from atomr_infer_core import (
    CircuitBreakerConfig,
    Deployment,
    ExecuteBatch,
    FinishReason,
    JitterKind,
    Message,
    RetryPolicy,
    RunnerContext,
    SamplingParams,
    Secret,
    TokenChunk,
    Tokens,
    TokenUsage,
    infer_runtime,
)
from atomr_infer_core.errors import (
    CircuitOpenError,
    ContentFilteredError,
    ContextLengthExceededError,
    ForbiddenError,
    MalformedStreamError,
    NetworkError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
)
from atomr_infer_gemini import PLUGIN, PRICES, CommandCredential, GeminiConfig, GeminiRunner
from atomr_infer_remote import CallableCredential, CircuitBreaker, RateLimiter
from atomr_infer_testkit import MockGeminiServer, mock_gemini

MODEL = "gemini-2.5-flash"


def deployment(**kw: Any) -> Deployment:
    kw.setdefault("retry", RetryPolicy(max_retries=3, initial_backoff=1.0, jitter=JitterKind.NONE))
    return Deployment(name="gem", model=MODEL, **kw)


def batch(text: str = "hello world", *, stream: bool = False, **kw: Any) -> ExecuteBatch:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content=text)]
    return ExecuteBatch(request_id="r1", model=MODEL, messages=messages, stream=stream, **kw)


def studio(server: MockGeminiServer, **kw: Any) -> GeminiConfig:
    kw.setdefault("api_key", Secret("AIza-test"))
    return GeminiConfig(endpoint=f"{server.url}/v1beta/", **kw)


@asynccontextmanager
async def open_runner(
    server: MockGeminiServer,
    dep: Deployment | None = None,
    config: GeminiConfig | None = None,
    **services: Any,
) -> AsyncIterator[GeminiRunner]:
    dep = dep or deployment()
    services.setdefault("limiter", RateLimiter(dep.rate_limits, name=dep.name))
    services.setdefault(
        "breaker", CircuitBreaker(dep.circuit_breaker, name=dep.name, provider="gemini")
    )
    runner = GeminiRunner(dep, config or studio(server), RunnerContext(services=services))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        yield runner
        nursery.cancel_scope.cancel()


async def collect(runner: GeminiRunner, b: ExecuteBatch) -> tuple[list[TokenChunk], Tokens]:
    chunks: list[TokenChunk] = []
    async with runner.execute(b) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks, Tokens.from_chunks(chunks)


# -- happy paths ------------------------------------------------------------------------


async def test_ai_studio_json_sends_the_key_and_maps_usage_and_cost() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.thoughts_tokens = 10
        server.cached_tokens = 2
        _, tokens = await collect(runner, batch(sampling=SamplingParams(temperature=0.1)))
    assert tokens.text == "Echo: hello world"
    assert tokens.finish_reason is FinishReason.STOP
    assert tokens.usage == TokenUsage(
        input_tokens=4, output_tokens=13, reasoning_tokens=10, cached_tokens=2
    )
    sent = server.requests[0]
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == "AIza-test"  # the original never sent it
    assert sent.json == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "hello world"}]}],
        "generationConfig": {"temperature": 0.1},
    }
    # 2 uncached at $0.30, 2 cached at $0.03, 13 output at $2.50 (per million)
    assert PRICES.cost(MODEL, tokens.usage) == pytest.approx((2 * 0.3 + 2 * 0.03 + 13 * 2.5) / 1e6)


async def test_stream_exact_chunks_usage_and_safety_settings() -> None:
    async with mock_gemini() as server:
        config = PLUGIN.structure_config(
            {
                "endpoint": f"{server.url}/v1beta/",
                "api_key": "k",
                "safety": [
                    {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
                ],
            }
        )
        async with open_runner(server, config=config) as runner:
            chunks, tokens = await collect(runner, batch(stream=True))
    assert [c.text_delta for c in chunks if c.text_delta] == ["Echo:", " hello", " world"]
    assert tokens.usage == TokenUsage(input_tokens=4, output_tokens=3)
    sent = server.requests[0]
    assert sent.path.endswith(":streamGenerateContent") and sent.query == "alt=sse"
    assert sent.json["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
    ]


async def test_two_candidates_and_max_tokens() -> None:
    sampling = SamplingParams(n=2, max_tokens=2)
    async with mock_gemini() as server, open_runner(server) as runner:
        _, tokens = await collect(runner, batch(stream=True, sampling=sampling))
    assert [c.text for c in tokens.choices] == ["Echo: hello", "Echo #1:"]
    assert tokens.choices[0].finish_reason is FinishReason.LENGTH
    assert tokens.choices[1].finish_reason is FinishReason.LENGTH


async def test_function_call_becomes_an_openai_tool_call() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    async with mock_gemini() as server, open_runner(server) as runner:
        _, tokens = await collect(runner, batch("find cats", tools=tools))
    assert tokens.finish_reason is FinishReason.TOOL_CALLS
    [call] = tokens.choices[0].tool_calls
    assert call["function"] == {"name": "lookup", "arguments": '{"input":"find cats"}'}


# -- Vertex AI --------------------------------------------------------------------------


async def test_vertex_url_and_bearer_token_refreshed_after_401(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("ya29.old\n")
    async with mock_gemini() as server:
        config = GeminiConfig(
            variant="vertex",
            project="proj",
            location="europe-west4",
            endpoint=server.url,
            access_token_file=str(token_file),
        )
        server.require_api_key("ya29.new")
        async with open_runner(server, config=config) as runner:
            token_file.write_text("ya29.new\n")  # rotated by an outside refresher
            _, tokens = await collect(runner, batch())
    assert tokens.text == "Echo: hello world"
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer ya29.old",
        "Bearer ya29.new",
    ]
    assert server.requests[0].path == (
        f"/v1/projects/proj/locations/europe-west4/publishers/google/models/{MODEL}:generateContent"
    )


async def test_vertex_token_is_refreshed_on_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    issued: list[float] = []

    async def fetch() -> str:
        issued.append(trio.current_time())
        return f"tok-{len(issued) - 1}"

    async with mock_gemini() as server:
        config = GeminiConfig(
            variant="vertex", project="p", endpoint=server.url, token_refresh_interval=600.0
        )
        credentials = CallableCredential(fetch)
        async with open_runner(server, config=config, credentials=credentials) as runner:
            start = trio.current_time()
            await collect(runner, batch())
            await trio.sleep(601.0)
            await collect(runner, batch())
    assert [r.headers["authorization"] for r in server.requests] == ["Bearer tok-0", "Bearer tok-1"]
    assert [t - start for t in issued] == [0.0, 600.0]


async def test_token_command_prints_the_token() -> None:
    script = "print('ya29.from-command')"
    secret = await CommandCredential((sys.executable, "-c", script)).credential()
    assert secret == Secret("ya29.from-command")


async def test_failing_token_command_is_unauthorized_with_advice() -> None:
    with pytest.raises(UnauthorizedError) as info:
        await CommandCredential((sys.executable, "-c", "import sys; sys.exit(3)")).credential()
    assert "exit 3" in info.value.message
    with pytest.raises(UnauthorizedError) as info:
        await CommandCredential(("/nonexistent/gcloud",)).credential()
    assert "access_token" in info.value.message


# -- retries and the breaker ------------------------------------------------------------


async def test_resource_exhausted_is_retried_after_retry_info_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.inject_status(429, retry_after=7)
        start = trio.current_time()
        _, tokens = await collect(runner, batch())
        assert trio.current_time() - start == pytest.approx(7.0)
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


async def test_resource_exhausted_past_the_deadline_is_raised_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.inject_status(429, retry_after=120)
        with pytest.raises(RateLimitedError) as info:
            await collect(runner, batch())
    assert info.value.retry_after == pytest.approx(120.0)
    assert len(server.requests) == 1


async def test_5xx_opens_the_breaker_then_fails_fast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dep = deployment(
        retry=RetryPolicy(max_retries=0),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, open_duration=30.0),
    )
    async with mock_gemini() as server, open_runner(server, dep) as runner:
        server.inject_5xx(5)
        for _ in range(2):
            with pytest.raises(ServerError):
                await collect(runner, batch())
        with pytest.raises(CircuitOpenError):
            await collect(runner, batch())
    assert len(server.requests) == 2


async def test_unavailable_error_event_before_output_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.error_event_after(0)
        _, tokens = await collect(runner, batch(stream=True))
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


# -- typed errors -----------------------------------------------------------------------


async def test_token_limit_is_context_length_on_enter() -> None:
    async with mock_gemini(context_window=10) as server, open_runner(server) as runner:
        with pytest.raises(ContextLengthExceededError) as info:
            async with runner.execute(batch(sampling=SamplingParams(max_tokens=100))):
                pytest.fail("the error comes from __aenter__")  # pragma: no cover
    assert (info.value.tokens, info.value.max_tokens) == (104, 10)
    assert len(server.requests) == 1


async def test_blocked_prompt_is_content_filtered_in_json_and_stream() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        for stream in (False, True):
            with pytest.raises(ContentFilteredError) as info:
                await collect(runner, batch("FORBIDDEN words", stream=stream))
            assert info.value.reason == "SAFETY"
    assert len(server.requests) == 2


async def test_invalid_api_key_400_rebuilds_the_session() -> None:
    # AI Studio answers a bad key with 400 INVALID_ARGUMENT / API_KEY_INVALID, not 401
    keys = iter(["AIza-old", "AIza-new"])

    async def fetch() -> str:
        return next(keys)

    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            ],
        }
    }
    async with mock_gemini() as server:
        server.inject_status(400, body=body)
        async with open_runner(server, credentials=CallableCredential(fetch)) as runner:
            _, tokens = await collect(runner, batch())
    assert tokens.text == "Echo: hello world"
    assert [r.headers["x-goog-api-key"] for r in server.requests] == ["AIza-old", "AIza-new"]


async def test_permission_denied_is_forbidden_and_bad_key_unauthorized() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.inject_status(403)
        with pytest.raises(ForbiddenError):
            await collect(runner, batch())
        server.require_api_key("another-key")
        with pytest.raises(UnauthorizedError):
            await collect(runner, batch())


# -- broken streams and cancellation ----------------------------------------------------


async def test_mid_stream_drop_raises_after_the_chunks_without_repeating() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.drop_after(2)
        texts: list[str] = []
        with pytest.raises((NetworkError, MalformedStreamError)):
            async with runner.execute(batch("hello big world", stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
    assert texts == ["Echo:", " hello"]
    assert len(server.requests) == 1


async def test_leaving_the_stream_closes_the_upstream_response() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.stall_after(1)
        async with runner.execute(batch(stream=True)) as stream:
            async for _ in stream:
                break
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
        assert runner.engine.statistics().in_flight == 0
    assert server.aborted_streams == 1


# -- the plugin -------------------------------------------------------------------------


def test_plugin_registers_gemini_patterns_and_prices() -> None:
    assert PLUGIN.name == "gemini"
    assert PLUGIN.package == "atomr-infer-gemini"
    assert "gemini-*" in PLUGIN.model_patterns
    assert infer_runtime(MODEL) == "gemini"
    assert PLUGIN.prices.lookup("gemini-2.5-pro-preview-06-05") is not None


def test_vertex_needs_a_project() -> None:
    with pytest.raises(ValueError, match="project"):
        GeminiConfig(variant="vertex")
    vertex = GeminiConfig(variant="vertex", project="p", region="asia-east1")
    assert vertex.url("gemini-2.5-pro", stream=False).startswith(
        "https://asia-east1-aiplatform.googleapis.com/v1/projects/p/locations/asia-east1/"
    )
