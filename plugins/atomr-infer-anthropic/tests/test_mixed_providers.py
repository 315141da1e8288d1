"""OpenAI, Anthropic and Gemini deployments in one Cluster and behind one gateway.

Each provider is the testkit's mock over real loopback HTTP; the gateway is talked to with
the official ``openai`` client. ``claude`` falls back to ``gemini``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest

from atomr_infer_anthropic import PLUGIN as ANTHROPIC
from atomr_infer_core import CircuitBreakerConfig, Deployment, RetryPolicy
from atomr_infer_gemini import PLUGIN as GEMINI
from atomr_infer_openai import _plugin as openai_plugin
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import mock_anthropic, mock_gemini, mock_openai

HELLO = [{"role": "user", "content": "hello there"}]


@asynccontextmanager
async def three_providers() -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    async with mock_openai() as oai, mock_anthropic() as ant, mock_gemini() as gem:
        deployments = [
            Deployment(
                name="gpt",
                model="gpt-4o-mini",
                runtime_config={"base_url": f"{oai.url}/v1", "api_key": "sk-openai"},
            ),
            Deployment(
                name="claude",
                model="claude-sonnet-4-5-20250929",
                runtime_config={"base_url": f"{ant.url}/v1", "api_key": "sk-ant"},
                fallbacks=["gemini"],
                retry=RetryPolicy(max_retries=0),
                circuit_breaker=CircuitBreakerConfig(failure_threshold=2, open_duration=60.0),
            ),
            Deployment(
                name="gemini",
                model="gemini-2.5-flash",
                runtime_config={"endpoint": f"{gem.url}/v1beta/", "api_key": "AIza-gem"},
            ),
        ]
        plugins = [openai_plugin, ANTHROPIC, GEMINI]
        async with open_cluster(deployments, plugins=plugins, load_entry_points=False) as cluster:
            yield cluster, oai, ant, gem


async def test_cluster_routes_by_name_and_infers_runtimes() -> None:
    async with three_providers() as (cluster, oai, ant, gem):
        replies = {
            name: await cluster.complete(name, messages=HELLO)
            for name in ("gpt", "claude", "gemini")
        }
    assert {name: r.text for name, r in replies.items()} == {
        "gpt": "Echo: hello there",
        "claude": "Echo: hello there",
        "gemini": "Echo: hello there",
    }
    assert {name: r.deployment for name, r in replies.items()} == {
        "gpt": "gpt",
        "claude": "claude",
        "gemini": "gemini",
    }
    assert oai.requests[0].headers["authorization"] == "Bearer sk-openai"
    assert ant.requests[0].headers["x-api-key"] == "sk-ant"
    assert gem.requests[0].headers["x-goog-api-key"] == "AIza-gem"
    # prices come from each plugin's table
    assert replies["claude"].cost_usd == pytest.approx((2 * 3.0 + 3 * 15.0) / 1e6)
    assert replies["gemini"].cost_usd == pytest.approx((2 * 0.30 + 3 * 2.50) / 1e6)


async def test_fallback_chain_across_providers_and_breaker() -> None:
    async with three_providers() as (cluster, _, ant, gem):
        ant.inject_5xx(5, status=529)
        replies = [await cluster.complete("claude", messages=HELLO) for _ in range(3)]
    assert [r.deployment for r in replies] == ["gemini", "gemini", "gemini"]
    assert [r.text for r in replies] == ["Echo: hello there"] * 3
    # two overloaded answers opened claude's breaker: the third never reached Anthropic
    assert len(ant.requests) == 2
    assert len(gem.requests) == 3


async def test_one_gateway_serves_all_three_to_the_openai_client() -> None:
    async with three_providers() as (cluster, _, ant, gem), open_gateway(cluster, port=0) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        async with client:
            texts = {}
            for name in ("gpt", "claude", "gemini"):
                reply = await client.chat.completions.create(model=name, messages=HELLO)
                texts[name] = (reply.choices[0].message.content, reply.choices[0].finish_reason)
            stream = await client.chat.completions.create(
                model="claude",
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces, usage = [], None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage
            tools = [
                {
                    "type": "function",
                    "function": {"name": "lookup", "parameters": {"type": "object"}},
                }
            ]
            called = await client.chat.completions.create(
                model="gemini", messages=HELLO, tools=tools
            )
            ant.inject_5xx(1, status=529)
            rescued = await client.chat.completions.create(model="claude", messages=HELLO)
    assert texts == {name: ("Echo: hello there", "stop") for name in ("gpt", "claude", "gemini")}
    assert "".join(pieces) == "Echo: hello there"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 3)
    assert called.choices[0].finish_reason == "tool_calls"
    assert called.choices[0].message.tool_calls[0].function.name == "lookup"
    assert called.choices[0].message.tool_calls[0].function.arguments == '{"input":"hello there"}'
    assert rescued.choices[0].message.content == "Echo: hello there"
    assert len(gem.requests) == 3  # the plain call, the tool call, the fallback
