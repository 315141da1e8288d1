"""The litellm runtime against the mock OpenAI server (LiteLLM speaks OpenAI's wire)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    Message,
    RetryPolicy,
    RunnerContext,
    RuntimePlugin,
    SamplingParams,
    TokenChunk,
    Tokens,
    TokenUsage,
)
from atomr_infer_core.errors import InferenceError, ServerError
from atomr_infer_litellm import LiteLLMRunner
from atomr_infer_litellm._plugin import register_runtimes
from atomr_infer_openai import OpenAIRunner
from atomr_infer_testkit import mock_openai
from atomr_infer_testkit.contract import ContractAdapter, RunnerContractSuite


def _plugin() -> RuntimePlugin:
    found: list[RuntimePlugin] = []
    register_runtimes(found.append)
    (plugin,) = found
    return plugin


@pytest.fixture
def runner_contract() -> ContractAdapter:
    # a LiteLLM proxy speaks OpenAI's wire, so the mock OpenAI server stands in for it
    return ContractAdapter(
        plugin=_plugin(),
        runtime_config=lambda server: {"base_url": f"{server.url}/v1", "api_key": "sk-litellm"},
        model="litellm/claude-sonnet",
        serve=mock_openai,
        frames_before_text=1,  # the role chunk
        input_tokens=4,
    )


class TestLiteLLMRunnerContract(RunnerContractSuite):
    """429, 5xx, 401, broken streams, cancellation, usage and tools: the shared scenarios."""


def _chat(**kw: Any) -> ExecuteBatch:
    return ExecuteBatch(
        request_id="r", model="m", messages=[Message(role="user", content="hi there")], **kw
    )


async def _run(runner: OpenAIRunner, batch: ExecuteBatch) -> Tokens:
    """Run ``batch`` on a started runner; its error is raised outside the nursery."""
    chunks: list[TokenChunk] = []
    failure: list[InferenceError] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        try:
            async with runner.execute(batch) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
        except InferenceError as error:
            failure.append(error)
        nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return Tokens.from_chunks(chunks)


def test_plugin_registration_reuses_openai() -> None:
    plugin = _plugin()
    assert plugin.name == "litellm"
    assert plugin.model_patterns == ("litellm/*", "*via-litellm*")
    assert plugin.package == "atomr-infer-litellm"
    assert plugin.prices.lookup("litellm/gpt-4o") == plugin.prices.lookup("gpt-4o")
    assert issubclass(LiteLLMRunner, OpenAIRunner)


def test_default_retries_become_one() -> None:
    plugin = _plugin()
    config = plugin.structure_config({})
    runner = plugin.create(Deployment(name="d", model="litellm/x"), config, RunnerContext())
    assert runner.engine.deployment.retry.max_retries == 1  # type: ignore[attr-defined]
    custom = Deployment(name="d", model="litellm/x", retry=RetryPolicy(max_retries=5))
    runner = plugin.create(custom, config, RunnerContext())
    assert runner.engine.deployment.retry.max_retries == 5  # type: ignore[attr-defined]
    assert runner.runtime_kind == "litellm"


async def test_chat_through_the_proxy_strips_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITELLM_API_KEY", raising=False)
    plugin = _plugin()
    async with mock_openai() as server:
        config = plugin.structure_config({"base_url": f"{server.url}/v1"})
        runner = plugin.create(
            Deployment(name="d", model="litellm/claude-sonnet"), config, RunnerContext()
        )
        tokens = await _run(runner, _chat(stream=True, sampling=SamplingParams(top_k=5)))  # type: ignore[arg-type]
    assert tokens.text == "Echo: hi there"
    assert tokens.usage == TokenUsage(input_tokens=2, output_tokens=3)
    sent = server.requests[0]
    assert sent.json["model"] == "claude-sonnet"
    assert sent.json["top_k"] == 5
    assert "authorization" not in sent.headers  # no key configured, none sent


async def test_virtual_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_API_KEY", "sk-litellm")
    plugin = _plugin()
    async with mock_openai() as server:
        server.require_api_key("sk-litellm")
        config = plugin.structure_config({"base_url": f"{server.url}/v1"})
        runner = plugin.create(Deployment(name="d", model="x-via-litellm"), config, RunnerContext())
        tokens = await _run(runner, _chat())  # type: ignore[arg-type]
    assert tokens.text == "Echo: hi there"


async def test_one_retry_by_default(autojump_clock: trio.testing.MockClock) -> None:
    plugin = _plugin()
    async with mock_openai() as server:
        server.inject_5xx(2)
        config = plugin.structure_config({"base_url": f"{server.url}/v1"})
        runner = plugin.create(Deployment(name="d", model="litellm/x"), config, RunnerContext())
        with pytest.raises(ServerError):
            await _run(runner, _chat())  # type: ignore[arg-type]
    assert len(server.requests) == 2
