"""Hedging and stream continuation through the gateway, over the testkit's mock providers.

Real loopback HTTP and real time: the stalled upstream waits 3 s, hedges start after
200 ms, and the bounds below leave a wide margin either side.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anthropic
import attrs
import httpx
import openai
import pytest
import trio

from atomr_infer_anthropic import PLUGIN as ANTHROPIC
from atomr_infer_core import Budget, Deployment, RetryPolicy, TelemetryConfig
from atomr_infer_core.config import load_config
from atomr_infer_core.errors import ConfigError
from atomr_infer_openai import _plugin as openai_plugin
from atomr_infer_runtimes import Cluster, open_cluster
from atomr_infer_runtimes._execution import CONTINUE_INSTRUCTION
from atomr_infer_runtimes._telemetry import telemetry_from_config
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import (
    MockProviderServer,
    mock_anthropic,
    mock_openai,
    mock_otlp_collector,
)

PROMPT = "hello there big world"
HI = [{"role": "user", "content": PROMPT}]
NO_RETRY = RetryPolicy(max_retries=0)


@attrs.frozen
class Env:
    url: str
    cluster: Cluster
    openai: MockProviderServer
    backup: MockProviderServer


@asynccontextmanager
async def env(
    primary: dict[str, Any],
    backup: dict[str, Any] | None = None,
    *,
    backup_runtime: str = "openai",
    telemetry: Any = None,
) -> AsyncIterator[Env]:
    """``chat`` (openai mock, ``primary``'s extra keys) falling back to ``backup`` (an
    openai or anthropic mock)."""
    async with AsyncExitStack() as stack:
        oai = await stack.enter_async_context(mock_openai())
        if backup_runtime == "anthropic":
            other = await stack.enter_async_context(mock_anthropic())
            backup_dep = Deployment(
                name="backup",
                model="claude-sonnet-4-5-20250929",
                runtime="anthropic",
                runtime_config={"base_url": f"{other.url}/v1", "api_key": "sk-ant"},
                retry=NO_RETRY,
                **(backup or {}),
            )
        else:
            other = await stack.enter_async_context(mock_openai())
            backup_dep = Deployment(
                name="backup",
                model="gpt-4o-mini",
                runtime="openai",
                runtime_config={"base_url": f"{other.url}/v1", "api_key": "sk-b"},
                retry=NO_RETRY,
                **(backup or {}),
            )
        chat = Deployment(
            name="chat",
            model="gpt-4o-mini",
            runtime="openai",
            runtime_config={"base_url": f"{oai.url}/v1", "api_key": "sk-a"},
            retry=NO_RETRY,
            fallbacks=("backup",),
            **primary,
        )
        cluster = await stack.enter_async_context(
            open_cluster(
                [chat, backup_dep],
                plugins=[openai_plugin, ANTHROPIC],
                load_entry_points=False,
                telemetry=telemetry,
            )
        )
        url = await stack.enter_async_context(open_gateway(cluster, port=0))
        yield Env(url=url, cluster=cluster, openai=oai, backup=other)


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="dummy", max_retries=0)


def _counter(cluster: Cluster, name: str, deployment: str = "chat") -> float:
    return cluster.metrics.sample(f"{name}_total", {"deployment": deployment}) or 0.0


# ---------------------------------------------------------------- hedging


async def test_stalled_stream_is_hedged_on_a_sibling_replica_and_the_stall_closed() -> None:
    async with env({"replicas": 2, "hedge_after": "200ms"}) as e:
        e.openai.slow_first_byte(3.0)
        started = trio.current_time()
        stream = await _client(e.url).chat.completions.create(
            model="chat", messages=HI, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        elapsed = trio.current_time() - started
        assert text == f"Echo: {PROMPT}"
        assert 0.2 <= elapsed < 2.5  # hedge_after + the hedge's own latency, not the 3 s stall
        with trio.fail_after(5):
            await e.openai.wait_for_aborted_requests(1)  # the stalled upstream was closed
        assert len(e.openai.requests) == 2 and len(e.backup.requests) == 0
        assert _counter(e.cluster, "atomr_hedges") == 1
        assert _counter(e.cluster, "atomr_hedges_won") == 1
        replicas = e.cluster.runtime("chat").status().replicas
        assert [r.outstanding for r in replicas] == [0, 0]  # both attempts gave back


async def test_non_streaming_request_is_hedged_on_the_fallback() -> None:
    async with env({"hedge_after": "200ms"}) as e:
        e.openai.slow_first_byte(3.0)
        async with httpx.AsyncClient(base_url=e.url, timeout=10) as http:
            started = trio.current_time()
            reply = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
            elapsed = trio.current_time() - started
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == f"Echo: {PROMPT}"
        assert reply.headers["x-atomr-deployment"] == "backup"
        assert 0.2 <= elapsed < 2.5
        with trio.fail_after(5):
            await e.openai.wait_for_aborted_requests(1)
        assert _counter(e.cluster, "atomr_hedges_won") == 1


async def test_a_fast_first_chunk_starts_no_hedge() -> None:
    async with env({"replicas": 2, "hedge_after": "2s"}) as e:
        reply = await _client(e.url).chat.completions.create(model="chat", messages=HI)
        assert reply.choices[0].message.content == f"Echo: {PROMPT}"
        assert len(e.openai.requests) == 1
        assert _counter(e.cluster, "atomr_hedges") == 0


async def test_the_hedges_loser_is_charged_its_prompt() -> None:
    # both attempts take permits and are charged: the stalled one its prompt estimate
    budget = {"budget": Budget(max_spend_per_day_usd=100.0)}
    async with env({"hedge_after": "200ms", **budget}, budget) as e:
        e.openai.slow_first_byte(3.0)
        await _client(e.url).chat.completions.create(model="chat", messages=HI)
        with trio.fail_after(5):
            await e.openai.wait_for_aborted_requests(1)
        assert e.cluster.runtime("chat").budget.spend["day"] > 0
        assert e.cluster.runtime("backup").budget.spend["day"] > 0


async def test_p95_hedges_only_once_enough_first_chunks_were_seen() -> None:
    async with env({"replicas": 2, "hedge_after": "p95"}) as e:
        runtime = e.cluster.runtime("chat")
        assert runtime.hedge_delay() is None
        client = _client(e.url)
        for _ in range(runtime.ttft.min_samples):
            await client.chat.completions.create(model="chat", messages=HI)
        delay = runtime.hedge_delay()
        assert delay is not None and delay < 0.5
        e.openai.slow_first_byte(3.0)
        started = trio.current_time()
        await client.chat.completions.create(model="chat", messages=HI)
        assert trio.current_time() - started < 2.5
        assert _counter(e.cluster, "atomr_hedges_won") == 1


async def test_both_attempts_of_a_hedge_have_attempt_spans() -> None:
    async with mock_otlp_collector() as collector:
        telemetry = telemetry_from_config(TelemetryConfig(endpoint=collector.url))
        assert telemetry is not None
        try:
            async with env({"hedge_after": "200ms"}, telemetry=telemetry) as e:
                e.openai.slow_first_byte(3.0)
                await _client(e.url).chat.completions.create(model="chat", messages=HI)
        finally:
            await trio.to_thread.run_sync(telemetry.shutdown)
        names = collector.span_names()
    assert "atomr.attempt chat" in names and "atomr.attempt backup" in names


def test_hedge_after_on_a_non_idempotent_deployment_is_a_config_error() -> None:
    raw = {
        "deployment": [
            {"name": "chat", "model": "gpt-4o-mini", "idempotent": False, "hedge_after": "1s"}
        ]
    }
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    assert "deployment[0].hedge_after" in str(info.value)
    assert "idempotent" in str(info.value)
    with pytest.raises(ConfigError, match=r"deployment\[0\]\.hedge_after"):
        load_config({"deployment": [{"name": "c", "model": "gpt-4o", "hedge_after": "soon"}]})


# ---------------------------------------------------------------- stream continuation


async def test_dropped_stream_continues_on_a_prefill_fallback_without_repeating() -> None:
    async with env({"continue_on_failure": True}, backup_runtime="anthropic") as e:
        e.openai.drop_after(3)  # the role chunk, "Echo:", " hello"
        stream = await _client(e.url).chat.completions.create(
            model="chat", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"Echo: {PROMPT}"  # the streamed part, then the rest, once
        sent = e.backup.requests[-1].json["messages"]
        assert sent[-1] == {"role": "assistant", "content": "Echo: hello"}
        usage = chunks[-1].usage
        # one total: the cut attempt's output (estimated: 11 characters / 4 → 3) plus
        # the continuation's 3 words
        assert usage is not None and usage.completion_tokens == 3 + 3
        assert _counter(e.cluster, "atomr_continuations") == 1


async def test_a_continuation_asks_only_for_what_is_left_of_max_tokens() -> None:
    async with env({"continue_on_failure": True}, backup_runtime="anthropic") as e:
        e.openai.drop_after(3)  # "Echo: hello" cut: 3 output tokens estimated
        stream = await _client(e.url).chat.completions.create(
            model="chat", messages=HI, stream=True, max_tokens=10
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == f"Echo: {PROMPT}"
        assert e.backup.requests[-1].json["max_tokens"] == 10 - 3


async def test_a_cut_stream_that_used_all_of_max_tokens_is_not_continued() -> None:
    async with env({"continue_on_failure": True}, backup_runtime="anthropic") as e:
        e.openai.drop_after(3)
        stream = await _client(e.url).chat.completions.create(
            model="chat", messages=HI, stream=True, max_tokens=3
        )
        with pytest.raises(openai.APIError):
            _ = [c async for c in stream]
        assert e.backup.requests == []
        assert _counter(e.cluster, "atomr_continuations") == 0


async def test_dropped_stream_continues_with_an_instruction_where_no_prefill() -> None:
    async with env({"continue_on_failure": True}) as e:
        e.openai.drop_after(3)
        async with httpx.AsyncClient(base_url=e.url, timeout=10) as http:
            body = {"model": "chat", "messages": HI, "stream": True}
            async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                lines = [line async for line in reply.aiter_lines() if line.startswith("data:")]
        events = [json.loads(line[5:]) for line in lines if line != "data: [DONE]"]
        assert not any("error" in event for event in events)  # no error event
        text = "".join(
            (event["choices"][0]["delta"].get("content") or "")
            for event in events
            if event.get("choices")
        )
        assert text == "Echo: hello" + f"Echo: {CONTINUE_INSTRUCTION}"
        sent = e.backup.requests[-1].json["messages"]
        assert sent[-2:] == [
            {"role": "assistant", "content": "Echo: hello"},
            {"role": "user", "content": CONTINUE_INSTRUCTION},
        ]


async def test_without_continue_on_failure_the_stream_ends_with_the_error() -> None:
    async with env({}) as e:
        e.openai.drop_after(3)
        stream = await _client(e.url).chat.completions.create(
            model="chat", messages=HI, stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
        assert len(e.backup.requests) == 0


async def test_a_non_idempotent_next_target_does_not_continue() -> None:
    async with env({"continue_on_failure": True}, {"idempotent": False}) as e:
        e.openai.drop_after(3)
        stream = await _client(e.url).chat.completions.create(
            model="chat", messages=HI, stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
        assert len(e.backup.requests) == 0
        assert _counter(e.cluster, "atomr_continuations") == 0


async def test_messages_door_stream_continues_too() -> None:
    async with env({"continue_on_failure": True}, backup_runtime="anthropic") as e:
        e.openai.drop_after(3)
        client = anthropic.AsyncAnthropic(base_url=e.url, api_key="dummy", max_retries=0)
        async with client.messages.stream(model="chat", max_tokens=64, messages=HI) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text == f"Echo: {PROMPT}"
