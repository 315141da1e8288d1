"""The openai runner against the mock OpenAI server over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    FinishReason,
    Message,
    ModelRunner,
    RequestKind,
    RunnerContext,
    RuntimePlugin,
    SamplingParams,
    TokenChunk,
    Tokens,
    TokenUsage,
)
from atomr_infer_core.config import structure
from atomr_infer_core.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    ServerError,
    UnauthorizedError,
)
from atomr_infer_openai import OpenAIConfig, OpenAIRunner
from atomr_infer_openai._plugin import register_runtimes
from atomr_infer_testkit import MockOpenAIServer, mock_openai
from atomr_infer_testkit.contract import ContractAdapter, RunnerContractSuite


def _plugin() -> RuntimePlugin:
    found: list[RuntimePlugin] = []
    register_runtimes(found.append)
    (plugin,) = found
    return plugin


@asynccontextmanager
async def _runner(
    server: MockOpenAIServer, model: str = "gpt-4o-mini", **config: Any
) -> AsyncIterator[OpenAIRunner]:
    config.setdefault("base_url", f"{server.url}/v1")
    if "api_key_file" not in config:
        config.setdefault("api_key", "sk-mock")
    plugin = _plugin()
    deployment = Deployment(name="chat", model=model)
    runner = plugin.create(deployment, plugin.structure_config(config), RunnerContext())
    assert isinstance(runner, ModelRunner)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        yield runner  # type: ignore[misc]
        nursery.cancel_scope.cancel()


@pytest.fixture
def runner_contract() -> ContractAdapter:
    return ContractAdapter(
        plugin=_plugin(),
        runtime_config=lambda server: {"base_url": f"{server.url}/v1", "api_key": "sk-mock"},
        model="gpt-4o-mini",
        serve=mock_openai,
        frames_before_text=1,  # the role chunk
        input_tokens=4,
    )


class TestOpenAIRunnerContract(RunnerContractSuite):
    """429, 5xx, 401, broken streams, cancellation, usage and tools: the shared scenarios."""


def _chat(text: str = "hello world", **kw: Any) -> ExecuteBatch:
    return ExecuteBatch(
        request_id="req-1", model="chat", messages=[Message(role="user", content=text)], **kw
    )


async def _run(runner: OpenAIRunner, batch: ExecuteBatch) -> tuple[list[TokenChunk], Tokens]:
    chunks: list[TokenChunk] = []
    async with runner.execute(batch) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks, Tokens.from_chunks(chunks)


def test_plugin_registration() -> None:
    plugin = _plugin()
    assert plugin.name == "openai"
    assert plugin.package == "atomr-infer-openai"
    assert plugin.transport.is_remote
    assert "gpt-*" in plugin.model_patterns and "text-embedding-*" in plugin.model_patterns
    assert plugin.prices.lookup("gpt-4o-2024-11-20") is not None
    assert plugin.config_class is OpenAIConfig


async def test_chat_json_exact_text_usage_and_cost() -> None:
    async with mock_openai() as server, _runner(server) as runner:
        chunks, tokens = await _run(runner, _chat())
    assert tokens.text == "Echo: hello world"
    assert tokens.finish_reason is FinishReason.STOP
    assert tokens.usage == TokenUsage(input_tokens=2, output_tokens=3)
    assert {c.request_id for c in chunks} == {"req-1"}
    cost = _plugin().prices.cost("gpt-4o-mini", tokens.usage)
    assert cost == pytest.approx((2 * 0.15 + 3 * 0.60) / 1_000_000)
    sent = server.requests[0]
    assert sent.headers["authorization"] == "Bearer sk-mock"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello world"}],
    }


async def test_chat_stream_exact_text_and_detailed_usage() -> None:
    async with mock_openai() as server, _runner(server) as runner:
        server.cached_tokens = 1
        server.reasoning_tokens = 2
        chunks, tokens = await _run(runner, _chat(stream=True))
    assert [c.text_delta for c in chunks if c.text_delta] == ["Echo:", " hello", " world"]
    assert tokens.usage == TokenUsage(
        input_tokens=2, output_tokens=5, cached_tokens=1, reasoning_tokens=2
    )
    assert server.requests[0].json["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
async def test_n_choices_and_length_finish(stream: bool) -> None:
    batch = _chat("a b c d", sampling=SamplingParams(n=2, max_tokens=3), stream=stream)
    async with mock_openai() as server, _runner(server) as runner:
        _, tokens = await _run(runner, batch)
    assert [c.text for c in tokens.choices] == ["Echo: a b", "Echo #1: a"]  # three words each
    assert [c.finish_reason for c in tokens.choices] == [FinishReason.LENGTH] * 2


@pytest.mark.parametrize("stream", [False, True])
async def test_completions(stream: bool) -> None:
    batch = ExecuteBatch(
        request_id="c", model="m", kind=RequestKind.COMPLETION, prompt="once upon", stream=stream
    )
    async with mock_openai() as server, _runner(server) as runner:
        _, tokens = await _run(runner, batch)
    assert tokens.text == "Echo: once upon"
    assert tokens.usage == TokenUsage(input_tokens=2, output_tokens=3)


async def test_embeddings() -> None:
    batch = ExecuteBatch(
        request_id="e", model="m", kind=RequestKind.EMBEDDING, inputs=["a b", "c"], dimensions=3
    )
    async with mock_openai() as server, _runner(server, "text-embedding-3-small") as runner:
        _, tokens = await _run(runner, batch)
    from atomr_infer_testkit._mock_openai import embedding_vector

    assert tokens.embeddings == (tuple(embedding_vector("a b", 3)), tuple(embedding_vector("c", 3)))
    assert tokens.usage == TokenUsage(input_tokens=3)


async def test_azure_deployment_paths_and_api_key_header() -> None:
    async with mock_openai() as server:
        config = {"azure_endpoint": server.url, "azure_deployment": "my-dep", "base_url": "unused"}
        async with _runner(server, **config) as runner:
            _, tokens = await _run(runner, _chat())
    assert tokens.text == "Echo: hello world"
    sent = server.requests[0]
    assert sent.path == "/openai/deployments/my-dep/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == "sk-mock"
    assert "authorization" not in sent.headers


async def test_provider_prefix_is_stripped() -> None:
    async with mock_openai() as server, _runner(server, "openai/gpt-4o") as runner:
        await _run(runner, _chat())
    assert server.requests[0].json["model"] == "gpt-4o"


async def test_context_length_and_content_filter_are_typed() -> None:
    async with mock_openai(context_window=3) as server, _runner(server) as runner:
        with pytest.raises(ContextLengthExceededError):
            await _run(runner, _chat("one two three four"))
        with pytest.raises(ContentFilteredError):
            await _run(runner, _chat("FORBIDDEN"))
    assert len(server.requests) == 2


async def test_missing_env_key_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    runner = OpenAIRunner(Deployment(name="d", model="gpt-4o"), OpenAIConfig())
    with pytest.raises(UnauthorizedError, match="OPENAI_API_KEY is not set"):
        await runner.run()


async def test_env_key_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    async with mock_openai() as server:
        config = structure({"base_url": f"{server.url}/v1"}, OpenAIConfig)
        runner = OpenAIRunner(Deployment(name="d", model="gpt-4o"), config)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await _run(runner, _chat())
            nursery.cancel_scope.cancel()
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-env"


async def test_rotated_key_file_is_picked_up_after_a_401(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-old\n")
    async with mock_openai() as server:
        server.require_api_key("sk-new")
        async with _runner(server, api_key_file=str(key_file)) as runner:
            key_file.write_text("sk-new\n")
            _, tokens = await _run(runner, _chat())
            assert runner.statistics().session_rebuilds == 1
    assert tokens.text == "Echo: hello world"


async def test_in_band_stream_error_after_output_is_raised_typed() -> None:
    async with mock_openai() as server, _runner(server) as runner:
        server.error_event_after(2, type="server_error", message="overloaded")
        texts: list[str] = []
        with pytest.raises(ServerError, match="overloaded"):
            async with runner.execute(_chat(stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
    assert texts == ["Echo:"]
    assert len(server.requests) == 1


async def test_in_band_rate_limit_before_output_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_openai() as server, _runner(server) as runner:
        server.error_event_after(1, type="rate_limit_error", message="slow down")
        _, tokens = await _run(runner, _chat(stream=True))
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


async def test_a_body_the_wire_cannot_encode_fails_that_request_and_the_runner_serves_on() -> None:
    from atomr_infer_core.errors import BadRequestError

    async with mock_openai() as server, _runner(server) as runner:
        for batch in (
            _chat("a\ud800b"),
            _chat(tools=({"type": "function", "function": {"name": "f", "x": float("inf")}},)),
        ):
            with pytest.raises(BadRequestError, match="cannot be encoded for the upstream"):
                await _run(runner, batch)
        _, tokens = await _run(runner, _chat())
        assert runner.statistics().failed == {"bad_request": 2}
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 1  # the two that cannot be encoded were never sent
