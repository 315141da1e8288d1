"""The anthropic runner against the testkit's mock Anthropic server over real loopback HTTP."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from atomr_infer_anthropic import PLUGIN, PRICES, AnthropicConfig
from atomr_infer_core import (
    FinishReason,
    SamplingParams,
    Secret,
    TokenUsage,
)
from atomr_infer_core.errors import (
    ContextLengthExceededError,
    ForbiddenError,
    ServerError,
)
from atomr_infer_testkit import mock_anthropic
from atomr_infer_testkit.contract import (
    ContractAdapter,
    RunnerContractSuite,
    collect,
)

MODEL = "claude-sonnet-4-5-20250929"


ADAPTER = ContractAdapter(
    plugin=PLUGIN,
    runtime_config=lambda server: {"base_url": f"{server.url}/v1", "api_key": "sk-ant-test"},
    model=MODEL,
    serve=mock_anthropic,
    frames_before_text=3,  # message_start, content_block_start, ping
    input_tokens=4,
)
deployment, batch, open_runner = ADAPTER.deployment, ADAPTER.batch, ADAPTER.runner


@pytest.fixture
def runner_contract() -> ContractAdapter:
    return ADAPTER


class TestAnthropicRunnerContract(RunnerContractSuite):
    """429, 5xx, 401, broken streams, cancellation, usage and tools: the shared scenarios."""


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


async def test_max_tokens_cut_is_length() -> None:
    async with mock_anthropic() as server, open_runner(server) as runner:
        _, tokens = await collect(runner, batch(sampling=SamplingParams(max_tokens=2)))
    assert tokens.text == "Echo: hello"
    assert tokens.finish_reason is FinishReason.LENGTH
    assert server.requests[0].json["max_tokens"] == 2


# -- retries and the breaker ------------------------------------------------------------


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


# -- credentials and typed errors -------------------------------------------------------


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


# -- through the gateway ----------------------------------------------------------------


async def test_error_event_after_output_ends_the_gateway_stream_with_an_error_event() -> None:
    async with mock_anthropic() as server, ADAPTER.gateway(server) as http:
        server.error_event_after(2)
        messages = [{"role": "user", "content": "hello big world"}]
        body = {"model": "contract", "messages": messages, "stream": True}
        resp = await http.post("/v1/chat/completions", json=body)
    payloads = [json.loads(ln[6:]) for ln in resp.text.splitlines() if ln.startswith("data: {")]
    deltas = [p["choices"][0]["delta"] for p in payloads if p.get("choices")]
    assert "".join(d.get("content") or "" for d in deltas) == "Echo: hello"
    assert "error" in payloads[-1]
    assert "[DONE]" not in resp.text
    assert len(server.requests) == 1


# -- the plugin -------------------------------------------------------------------------


def test_plugin_registers_claude_patterns_and_prices() -> None:
    assert PLUGIN.name == "anthropic"
    assert PLUGIN.package == "atomr-infer-anthropic"
    assert "claude-*" in PLUGIN.model_patterns
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
