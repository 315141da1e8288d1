"""Tool round trips and streamed tool calls through the front doors, over mock providers.

The anthropic client drives ``/v1/messages`` and the openai client ``/v1/responses``
against openai and anthropic deployments on the testkit's loopback mock servers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import openai
import pytest

from atomr_infer_anthropic import PLUGIN as ANTHROPIC
from atomr_infer_core import Deployment, RetryPolicy
from atomr_infer_litellm import _runtime as litellm_plugin
from atomr_infer_openai import _plugin as openai_plugin
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockProviderServer, mock_anthropic, mock_openai

TOOL_SCHEMA = {"type": "object", "properties": {"input": {"type": "string"}}}


@asynccontextmanager
async def two_providers() -> AsyncIterator[tuple[str, dict[str, MockProviderServer]]]:
    async with mock_openai() as oai, mock_anthropic() as ant:
        deployments = [
            Deployment(
                name="openai",
                model="gpt-4o-mini",
                runtime_config={"base_url": f"{oai.url}/v1", "api_key": "sk-oai"},
                retry=RetryPolicy(max_retries=0),
            ),
            Deployment(
                name="anthropic",
                model="claude-sonnet-4-5",
                runtime_config={"base_url": f"{ant.url}/v1", "api_key": "sk-ant"},
                retry=RetryPolicy(max_retries=0),
            ),
            Deployment(
                name="litellm",
                model="litellm/gpt-4o-mini",
                runtime="litellm",
                runtime_config={"base_url": f"{oai.url}/v1"},
                retry=RetryPolicy(max_retries=0),
            ),
        ]
        plugins = [openai_plugin, ANTHROPIC, litellm_plugin]
        async with (
            open_cluster(deployments, plugins=plugins, load_entry_points=False) as cluster,
            open_gateway(cluster, port=0) as url,
        ):
            yield url, {"openai": oai, "anthropic": ant}


@pytest.mark.parametrize("target", ["openai", "anthropic"])
async def test_messages_tool_round_trip(target: str) -> None:
    tools: Any = [{"name": "lookup", "description": "look up", "input_schema": TOOL_SCHEMA}]
    first_turn: Any = [{"role": "user", "content": "find cats"}]
    async with (
        two_providers() as (url, servers),
        anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client,
    ):
        call = await client.messages.create(
            model=target, max_tokens=64, messages=first_turn, tools=tools
        )
        use = next(b for b in call.content if b.type == "tool_use")
        history = [
            *first_turn,
            {"role": "assistant", "content": [b.model_dump() for b in call.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "42 cats"}],
            },
        ]
        answer = await client.messages.create(
            model=target,
            max_tokens=64,
            messages=history,
            tools=tools,
            tool_choice={"type": "none"},
        )
    assert (use.name, use.input, call.stop_reason) == ("lookup", {"input": "find cats"}, "tool_use")
    # the mock openai echoes the last *user* message; the mock anthropic reads tool results
    echoed = "find cats" if target == "openai" else "42 cats"
    assert answer.content[0].text == f"Echo: {echoed}"
    assert answer.stop_reason == "end_turn"
    upstream = servers[target].requests[-1].json
    if target == "openai":
        assert [m["role"] for m in upstream["messages"]] == ["user", "assistant", "tool"]
        assert upstream["messages"][2] == {
            "role": "tool",
            "content": "42 cats",
            "tool_call_id": use.id,
        }
        assert upstream["tool_choice"] == "none"
    else:
        result = upstream["messages"][2]["content"][0]
        assert (result["type"], result["tool_use_id"]) == ("tool_result", use.id)
        assert upstream["tool_choice"] == {"type": "none"}


@pytest.mark.parametrize("target", ["openai", "anthropic"])
async def test_messages_stream_of_a_tool_call(target: str) -> None:
    tools: Any = [{"name": "lookup", "input_schema": TOOL_SCHEMA}]
    async with (
        two_providers() as (url, _),
        anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client,
    ):
        async with client.messages.stream(
            model=target,
            max_tokens=64,
            messages=[{"role": "user", "content": "find cats"}],
            tools=tools,
        ) as stream:
            kinds = [e.type async for e in stream]
            final = await stream.get_final_message()
    use = final.content[-1]
    assert use.type == "tool_use"
    assert (use.name, use.input) == ("lookup", {"input": "find cats"})
    assert final.stop_reason == "tool_use"
    assert "input_json" in kinds


@pytest.mark.parametrize("target", ["openai", "anthropic"])
async def test_responses_function_tool_round_trip(target: str) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": TOOL_SCHEMA}]
    async with (
        two_providers() as (url, servers),
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        first = await client.responses.create(model=target, input="find cats", tools=tools)
        call = next(item for item in first.output if item.type == "function_call")
        second = await client.responses.create(
            model=target,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42 cats"}],
            tools=tools,
            tool_choice="none",
        )
    assert (call.name, json.loads(call.arguments)) == ("lookup", {"input": "find cats"})
    echoed = "find cats" if target == "openai" else "42 cats"
    assert second.output_text == f"Echo: {echoed}"
    upstream = servers[target].requests[-1]
    if target == "openai":
        # same dialect: the upstream's own /responses got the body, its store the context
        assert upstream.path == "/v1/responses"
        assert upstream.json["previous_response_id"] == first.id
        assert upstream.json["input"][0]["call_id"] == call.call_id
    else:
        upstream = upstream.json
        assert [m["role"] for m in upstream["messages"]] == ["user", "assistant", "user"]


@pytest.mark.parametrize("target", ["openai", "anthropic"])
async def test_responses_stream_of_a_function_call(target: str) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": TOOL_SCHEMA}]
    async with (
        two_providers() as (url, _),
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        async with client.responses.stream(model=target, input="find cats", tools=tools) as s:
            events = [e async for e in s]
            final = await s.get_final_response()
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert json.loads("".join(pieces)) == {"input": "find cats"}
    call = final.output[-1]
    assert call.type == "function_call"
    assert json.loads(call.arguments) == {"input": "find cats"}


async def test_responses_usage_reports_reasoning_and_cached_tokens() -> None:
    async with (
        two_providers() as (url, servers),
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        servers["openai"].reasoning_tokens = 7  # type: ignore[attr-defined]
        servers["openai"].cached_tokens = 1  # type: ignore[attr-defined]
        reply = await client.responses.create(
            model="openai", input="hello there", reasoning={"effort": "low"}
        )
    assert reply.usage.output_tokens_details.reasoning_tokens == 7
    assert reply.usage.input_tokens_details.cached_tokens == 1
    assert servers["openai"].requests[-1].json["reasoning"] == {"effort": "low"}


async def test_messages_usage_reports_cache_reads_and_writes() -> None:
    async with (
        two_providers() as (url, servers),
        anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client,
    ):
        servers["anthropic"].cache_read_tokens = 5  # type: ignore[attr-defined]
        servers["anthropic"].cache_creation_tokens = 3  # type: ignore[attr-defined]
        reply = await client.messages.create(
            model="anthropic", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        async with client.messages.stream(
            model="anthropic", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            streamed = await stream.get_final_message()
    for usage in (reply.usage, streamed.usage):
        assert usage.cache_read_input_tokens == 5
        assert usage.cache_creation_input_tokens == 3
        assert usage.input_tokens == 1


async def test_messages_thinking_from_a_reasoning_runtime_is_a_thinking_block() -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    hi: Any = [{"role": "user", "content": "hello there"}]
    async with (
        two_providers() as (url, servers),
        anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client,
    ):
        reply = await client.messages.create(
            model="openai", max_tokens=4096, messages=hi, thinking=thinking
        )
        async with client.messages.stream(
            model="openai", max_tokens=4096, messages=hi, thinking=thinking
        ) as stream:
            kinds = [e.type async for e in stream]
            final = await stream.get_final_message()
    assert servers["openai"].requests[-1].json["reasoning_effort"] == "low"
    for message in (reply, final):
        assert [b.type for b in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "Thinking: hello there"
        assert message.content[1].text == "Echo: hello there"
    assert "thinking" in kinds


async def test_responses_reasoning_from_a_translated_runtime_is_a_reasoning_item() -> None:
    async with (
        two_providers() as (url, _),
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        reply = await client.responses.create(
            model="litellm", input="hello there", reasoning={"effort": "medium"}
        )
        stream = await client.responses.create(
            model="litellm", input="hello there", reasoning={"effort": "medium"}, stream=True
        )
        events = [e async for e in stream]
    assert [item.type for item in reply.output] == ["reasoning", "message"]
    assert reply.output[0].content[0].text == "Thinking: hello there"
    assert reply.output_text == "Echo: hello there"
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert deltas == ["Thinking: hello there"]
    done = events[-1].response
    assert [item.type for item in done.output] == ["reasoning", "message"]


async def test_chat_carries_reasoning_content_from_a_reasoning_runtime() -> None:
    hi: Any = [{"role": "user", "content": "hello there"}]
    async with (
        two_providers() as (url, _),
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        reply = await client.chat.completions.create(
            model="litellm", messages=hi, reasoning_effort="low"
        )
        stream = await client.chat.completions.create(
            model="litellm", messages=hi, reasoning_effort="low", stream=True
        )
        chunks = [c async for c in stream]
    assert reply.choices[0].message.model_extra["reasoning_content"] == "Thinking: hello there"
    assert reply.choices[0].message.content == "Echo: hello there"
    pieces = [
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in chunks if c.choices
    ]
    assert [p for p in pieces if p] == ["Thinking: hello there"]
