"""The anthropic runner against the testkit's mock Anthropic server over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from atomr_infer_anthropic import PLUGIN, PRICES, AnthropicConfig, AnthropicRunner
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
    ContextLengthExceededError,
    ForbiddenError,
    MalformedStreamError,
    NetworkError,
    ServerError,
    UnauthorizedError,
)
from atomr_infer_remote import CallableCredential, CircuitBreaker, RateLimiter
from atomr_infer_testkit import MockAnthropicServer, mock_anthropic

MODEL = "claude-sonnet-4-5-20250929"


def deployment(**kw: Any) -> Deployment:
    kw.setdefault("retry", RetryPolicy(max_retries=3, initial_backoff=1.0, jitter=JitterKind.NONE))
    return Deployment(name="claude", model=MODEL, **kw)


def batch(text: str = "hello world", *, stream: bool = False, **kw: Any) -> ExecuteBatch:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content=text)]
    return ExecuteBatch(request_id="r1", model=MODEL, messages=messages, stream=stream, **kw)


@asynccontextmanager
async def open_runner(
    server: MockAnthropicServer, dep: Deployment | None = None, **services: Any
) -> AsyncIterator[AnthropicRunner]:
    dep = dep or deployment()
    services.setdefault("limiter", RateLimiter(dep.rate_limits, name=dep.name))
    services.setdefault(
        "breaker", CircuitBreaker(dep.circuit_breaker, name=dep.name, provider="anthropic")
    )
    config = AnthropicConfig(base_url=f"{server.url}/v1", api_key=Secret("sk-ant-test"))
    runner = AnthropicRunner(dep, config, RunnerContext(services=services))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        yield runner
        nursery.cancel_scope.cancel()


async def collect(runner: AnthropicRunner, b: ExecuteBatch) -> tuple[list[TokenChunk], Tokens]:
    chunks: list[TokenChunk] = []
    async with runner.execute(b) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks, Tokens.from_chunks(chunks)


# -- happy paths ------------------------------------------------------------------------


async def test_json_answer_headers_body_usage_and_cost() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.cache_read_tokens = 100
        _, tokens = await collect(runner, batch())
    assert tokens.text == "Echo: hello world"
    assert tokens.finish_reason is FinishReason.STOP
    assert tokens.usage == TokenUsage(input_tokens=104, output_tokens=3, cached_tokens=100)
    sent = server.requests[0]
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json == {
        "model": MODEL,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hello world"}],
        "max_tokens": 4096,
    }
    # 4 uncached at $3, 100 cache reads at $0.30, 3 output at $15 (per million)
    assert PRICES.cost(MODEL, tokens.usage) == pytest.approx((4 * 3 + 100 * 0.3 + 3 * 15) / 1e6)


async def test_stream_exact_chunks_and_merged_usage() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.cache_creation_tokens = 10
        chunks, tokens = await collect(runner, batch(stream=True))
    assert [c.text_delta for c in chunks if c.text_delta] == ["Echo:", " hello", " world"]
    assert tokens.usage == TokenUsage(input_tokens=4, output_tokens=3, cache_creation_tokens=10)
    assert tokens.finish_reason is FinishReason.STOP
    assert server.requests[0].json["stream"] is True
    assert server.streams_completed == 1


async def test_stream_tool_call_arrives_in_openai_shape() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    async with mock_anthropic() as server, open_runner(server) as runner:
        _, tokens = await collect(runner, batch("find cats", stream=True, tools=tools))
    assert tokens.finish_reason is FinishReason.TOOL_CALLS
    assert tokens.choices[0].tool_calls == (
        {
            "id": "toolu_mock_0",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"input":"find cats"}'},
        },
    )


async def test_max_tokens_cut_is_length() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        _, tokens = await collect(runner, batch(sampling=SamplingParams(max_tokens=2)))
    assert tokens.text == "Echo: hello"
    assert tokens.finish_reason is FinishReason.LENGTH
    assert server.requests[0].json["max_tokens"] == 2


# -- retries and the breaker ------------------------------------------------------------


async def test_429_with_retry_after_is_retried_after_that_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.inject_status(429, retry_after=7)
        start = trio.current_time()
        _, tokens = await collect(runner, batch())
        assert trio.current_time() - start == pytest.approx(7.0)
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


async def test_529_overloaded_is_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.inject_status(529)
        start = trio.current_time()
        _, tokens = await collect(runner, batch())
        assert trio.current_time() - start == pytest.approx(1.0)
    assert tokens.text == "Echo: hello world"


async def test_overloaded_error_event_before_output_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.error_event_after(0)
        start = trio.current_time()
        _, tokens = await collect(runner, batch(stream=True))
        assert trio.current_time() - start == pytest.approx(1.0)
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


async def test_error_event_after_output_raises_the_typed_error_without_repeating() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.error_event_after(2)
        texts: list[str] = []
        with pytest.raises(ServerError) as info:
            async with runner.execute(batch(stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
    assert texts == ["Echo:", " hello"]
    assert info.value.status == 529
    assert len(server.requests) == 1


async def test_5xx_opens_the_breaker_then_fails_fast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dep = deployment(
        retry=RetryPolicy(max_retries=0),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, open_duration=30.0),
    )
    async with mock_anthropic() as server, open_runner(server, dep) as runner:
        server.inject_5xx(5, status=500)
        for _ in range(2):
            with pytest.raises(ServerError):
                await collect(runner, batch())
        with pytest.raises(CircuitOpenError):
            await collect(runner, batch())
    assert len(server.requests) == 2


# -- credentials and typed errors -------------------------------------------------------


async def test_401_rebuilds_the_session_and_succeeds() -> None:
    keys = iter(["sk-ant-old", "sk-ant-new"])

    async def fetch() -> str:
        return next(keys)

    async with mock_anthropic() as server:
        server.require_api_key("sk-ant-new")
        async with open_runner(server, credentials=CallableCredential(fetch)) as runner:
            _, tokens = await collect(runner, batch())
            rebuilds = runner.engine.statistics().session_rebuilds
    assert tokens.text == "Echo: hello world"
    assert [r.headers["x-api-key"] for r in server.requests] == ["sk-ant-old", "sk-ant-new"]
    assert rebuilds == 1


async def test_wrong_key_twice_is_unauthorized() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.require_api_key("something-else")
        with pytest.raises(UnauthorizedError):
            await collect(runner, batch())
    assert len(server.requests) == 2


async def test_prompt_too_long_is_context_length_on_enter() -> None:
    async with mock_anthropic(context_window=100) as server, open_runner(server) as runner:
        with pytest.raises(ContextLengthExceededError) as info:
            async with runner.execute(batch()):
                pytest.fail("the error comes from __aenter__")  # pragma: no cover
    assert (info.value.tokens, info.value.max_tokens) == (4100, 100)
    assert len(server.requests) == 1


async def test_permission_error_is_forbidden() -> None:
    body = {"type": "error", "error": {"type": "permission_error", "message": "not allowed"}}
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.inject_status(403, body=body)
        with pytest.raises(ForbiddenError):
            await collect(runner, batch())


# -- broken streams and cancellation ----------------------------------------------------


async def test_mid_stream_drop_raises_after_the_chunks_without_repeating() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        # message_start, content_block_start, ping, "Echo:", " hello" — then the cut
        server.drop_after(5)
        texts: list[str] = []
        with pytest.raises((NetworkError, MalformedStreamError)):
            async with runner.execute(batch("hello big world", stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
    assert texts == ["Echo:", " hello"]
    assert len(server.requests) == 1


async def test_leaving_the_stream_closes_the_upstream_response() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        server.stall_after(4)
        async with runner.execute(batch(stream=True)) as stream:
            async for _ in stream:
                break
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
        assert runner.engine.statistics().in_flight == 0
    assert server.aborted_streams == 1


# -- the plugin -------------------------------------------------------------------------


def test_plugin_registers_claude_patterns_and_prices() -> None:
    assert PLUGIN.name == "anthropic"
    assert PLUGIN.package == "atomr-infer-anthropic"
    assert "claude-*" in PLUGIN.model_patterns
    assert infer_runtime(MODEL) == "anthropic"
    assert PLUGIN.prices.lookup(MODEL) is not None
    config = PLUGIN.structure_config(
        {
            "api_key": "sk",
            "anthropic_beta": ["prompt-caching-2024-07-31"],
            "default_max_tokens": 1000,
        }
    )
    assert isinstance(config, AnthropicConfig)
    assert config.api_key == Secret("sk")
    assert config.messages_url() == "https://api.anthropic.com/v1/messages"
