"""The openai runtime through the real Cluster and the gateway, against mock OpenAI servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import trio
import trio.testing

import atomr_infer_openai._plugin as openai_plugin
from atomr_infer_core.config import load_config
from atomr_infer_core.errors import ContextLengthExceededError, NetworkError
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockOpenAIServer, mock_openai

HI = [{"role": "user", "content": "hello world"}]


def _deployment(name: str, server: MockOpenAIServer, **extra: Any) -> dict[str, Any]:
    runtime_config = {"base_url": f"{server.url}/v1", "api_key": "sk-mock"}
    runtime_config.update(extra.pop("runtime_config", {}))
    return {
        "name": name,
        "model": "gpt-4o-mini",
        "runtime_config": runtime_config,
        "retry": {"jitter": "none"},
        **extra,
    }


@asynccontextmanager
async def _cluster(*deployments: dict[str, Any]) -> AsyncIterator[Any]:
    config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": list(deployments)})
    async with open_cluster(config, plugins=[openai_plugin], load_entry_points=False) as cluster:
        yield cluster


# -- through the Cluster ----------------------------------------------------------------
async def test_cluster_json_text_usage_and_cost() -> None:
    async with mock_openai() as server, _cluster(_deployment("chat", server)) as cluster:
        tokens = await cluster.complete("chat", messages=HI)
    assert tokens.text == "Echo: hello world"
    assert (tokens.usage.input_tokens, tokens.usage.output_tokens) == (2, 3)
    assert tokens.deployment == "chat"
    assert tokens.cost_usd == pytest.approx((2 * 0.15 + 3 * 0.60) / 1_000_000)


async def test_cluster_stream_exact_chunks() -> None:
    async with mock_openai() as server, _cluster(_deployment("chat", server)) as cluster:
        async with cluster.stream("chat", messages=HI) as chunks:
            texts = [c.text_delta async for c in chunks if c.text_delta]
    assert texts == ["Echo:", " hello", " world"]


async def test_cluster_429_retry_after_is_waited(autojump_clock: trio.testing.MockClock) -> None:
    async with mock_openai() as server, _cluster(_deployment("chat", server)) as cluster:
        server.inject_status(429, retry_after=4)
        start = trio.current_time()
        tokens = await cluster.complete("chat", messages=HI)
        assert trio.current_time() - start == pytest.approx(4.0)
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


async def test_cluster_breaker_opens_then_falls_back_fast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_openai() as primary, mock_openai() as backup:
        chat = _deployment(
            "chat",
            primary,
            fallbacks=["backup"],
            retry={"max_retries": 0},
            circuit_breaker={"failure_threshold": 2, "open_duration": "60s"},
        )
        async with _cluster(chat, _deployment("backup", backup)) as cluster:
            primary.inject_5xx(10)
            served = [(await cluster.complete("chat", messages=HI)).deployment for _ in range(4)]
            assert cluster.breaker("chat").state == "open"
    assert served == ["backup"] * 4
    assert len(primary.requests) == 2  # after two failures the breaker answers at once
    assert len(backup.requests) == 4


async def test_cluster_401_rebuilds_the_session(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-old")
    async with mock_openai() as server:
        server.require_api_key("sk-new")
        chat = _deployment("chat", server, runtime_config={"api_key_file": str(key)})
        del chat["runtime_config"]["api_key"]
        async with _cluster(chat) as cluster:
            key.write_text("sk-new")
            tokens = await cluster.complete("chat", messages=HI)
    assert tokens.text == "Echo: hello world"
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer sk-old",
        "Bearer sk-new",
    ]


async def test_cluster_context_length_is_typed() -> None:
    async with (
        mock_openai(context_window=1) as server,
        _cluster(_deployment("chat", server)) as cluster,
    ):
        with pytest.raises(ContextLengthExceededError):
            await cluster.complete("chat", messages=HI)


async def test_cluster_mid_stream_drop_has_no_duplicated_text() -> None:
    async with mock_openai() as server, _cluster(_deployment("chat", server)) as cluster:
        server.drop_after(3)
        texts: list[str] = []
        with pytest.raises(NetworkError):
            async with cluster.stream("chat", messages=HI) as chunks:
                async for chunk in chunks:
                    texts.append(chunk.text_delta)
    assert texts == ["Echo:", " hello"]
    assert len(server.requests) == 1


# -- through the gateway ----------------------------------------------------------------
async def test_gateway_sdk_json_and_stream() -> None:
    async with mock_openai() as server, _cluster(_deployment("chat", server)) as cluster:
        async with open_gateway(cluster) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            async with client:
                reply = await client.chat.completions.create(model="chat", messages=HI)
                stream = await client.chat.completions.create(
                    model="chat", messages=HI, stream=True, stream_options={"include_usage": True}
                )
                chunks = [c async for c in stream]
    assert reply.choices[0].message.content == "Echo: hello world"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 3)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Echo: hello world"
    )
    assert chunks[-1].usage.completion_tokens == 3


async def test_engine_retries_reach_the_metrics(autojump_clock: trio.testing.MockClock) -> None:
    async with mock_openai() as server, _cluster(_deployment("chat", server)) as cluster:
        server.inject_5xx(2)
        tokens = await cluster.complete("chat", messages=HI)
        cluster.metrics.render()
        retries = cluster.metrics.sample("atomr_upstream_retries_total", {"deployment": "chat"})
    assert tokens.text == "Echo: hello world"
    assert retries == 2.0


# -- one request cannot hurt another ----------------------------------------------------
async def test_a_request_the_wire_cannot_encode_fails_alone() -> None:
    """Past the gateway's front door (embedded use), a lone surrogate or a NaN reaches
    the engine: a 400 for that request; the replica and the stream beside it go on."""
    import math

    from atomr_infer_core import ExecuteBatch, Message
    from atomr_infer_core.errors import BadRequestError

    poisons = [
        ExecuteBatch(
            request_id="surrogate",
            model="chat",
            kind="chat",
            messages=(Message(role="user", content="a\ud800b"),),
        ),
        ExecuteBatch(
            request_id="nan-tool",
            model="chat",
            kind="chat",
            messages=(Message(role="user", content="hi"),),
            tools=({"type": "function", "function": {"name": "f", "x": math.nan}},),
        ),
    ]
    async with mock_openai() as server, _cluster(_deployment("chat", server)) as cluster:
        async with cluster.stream("chat", messages=HI) as beside:
            first = await beside.__anext__()
            # the surrogate is refused by the cluster before routing, the NaN (in
            # `tools`, which only the provider's encoder reads) by the engine
            for batch, refusal in zip(
                poisons, ("lone UTF-16 surrogate", "cannot be encoded"), strict=True
            ):
                with pytest.raises(BadRequestError, match=refusal):
                    async with cluster.execute(batch) as chunks:
                        async for _ in chunks:
                            pass
            rest = [c.text_delta async for c in beside]
        [status] = cluster.list()
        after = await cluster.complete("chat", messages=HI)
    assert first.text_delta + "".join(rest) == "Echo: hello world"
    assert (status.state, status.replicas[0].restarts) == ("serving", 0)
    assert after.text == "Echo: hello world"
    assert len(server.requests) == 2  # the poisoned ones were never sent


async def test_a_missing_api_key_fails_open_cluster_naming_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from atomr_infer_core.errors import ConfigError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = load_config({"deployment": [{"name": "chat", "model": "gpt-4o-mini"}]})
    with pytest.raises(
        ConfigError, match=r"deployment\[0\]\.runtime_config\.api_key: .*OPENAI_API_KEY"
    ):
        async with open_cluster(config, plugins=[openai_plugin], load_entry_points=False):
            pass
