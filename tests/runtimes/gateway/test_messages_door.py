"""The Anthropic Messages front door, driven with the official anthropic client and raw HTTP."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from atomr_infer_core import Role, errors
from atomr_infer_testkit import MockConfig

from .conftest import FakeCluster, open_gateway

HI = [{"role": "user", "content": "hi"}]


def _client(url: str, **kw: object) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="dummy", max_retries=0, **kw)  # type: ignore[arg-type]


async def test_messages_create_translates_onto_the_request_path(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        reply = await client.messages.create(
            model="chat",
            max_tokens=64,
            system=[
                {
                    "type": "text",
                    "text": "be brief",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                }
            ],
            messages=HI,
            stop_sequences=["END"],
            cache_control={"type": "ephemeral"},
            extra_body={"temperature": 0.5},
        )
    assert reply.type == "message"
    assert reply.role == "assistant"
    assert reply.model == "chat"
    assert [b.type for b in reply.content] == ["text"]
    assert reply.content[0].text == "Hello, world!"
    assert reply.stop_reason == "end_turn"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (5, 4)
    assert reply.usage.cache_read_input_tokens == 0
    batch = default_cluster.records[0].batch
    assert [m.role for m in batch.messages] == [Role.SYSTEM, Role.USER]
    assert batch.messages[0].content == "be brief"
    assert batch.sampling.max_tokens == 64
    assert batch.sampling.temperature == 0.5
    assert batch.sampling.stop == ("END",)


async def test_max_tokens_cut_is_stop_reason_max_tokens(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        reply = await client.messages.create(model="chat", max_tokens=2, messages=HI)
    assert reply.content[0].text == "Hello,"
    assert reply.stop_reason == "max_tokens"


async def test_messages_stream_has_anthropics_event_sequence(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        async with client.messages.stream(model="chat", max_tokens=64, messages=HI) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
    raw = [e.type for e in events if e.type not in ("text",)]
    assert raw == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].text == "Hello, world!"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 4)


async def test_raw_stream_starts_with_message_start_then_ping(
    default_cluster: FakeCluster,
) -> None:
    body = {"model": "chat", "max_tokens": 8, "messages": HI, "stream": True}
    async with open_gateway(default_cluster) as url, httpx.AsyncClient() as http:
        reply = await http.post(f"{url}/v1/messages", json=body)
    names = [line[7:] for line in reply.text.splitlines() if line.startswith("event: ")]
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]


async def test_count_tokens_answers_without_running_a_model(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        counted = await client.messages.count_tokens(
            model="chat", messages=[{"role": "user", "content": "a" * 40}]
        )
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.count_tokens(model="nope", messages=HI)
    assert counted.input_tokens == 10
    assert default_cluster.records == []


async def test_x_api_key_and_bearer_both_authenticate() -> None:
    cluster = FakeCluster({"chat": MockConfig(chunks=("ok",))}, api_keys=("sk-gw",))
    async with open_gateway(cluster) as url:
        async with anthropic.AsyncAnthropic(base_url=url, api_key="sk-gw", max_retries=0) as c:
            by_key = await c.messages.create(model="chat", max_tokens=8, messages=HI)
        async with anthropic.AsyncAnthropic(base_url=url, auth_token="sk-gw", max_retries=0) as c:
            by_bearer = await c.messages.create(model="chat", max_tokens=8, messages=HI)
        async with anthropic.AsyncAnthropic(base_url=url, api_key="wrong", max_retries=0) as c:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await c.messages.create(model="chat", max_tokens=8, messages=HI)
    assert by_key.content[0].text == by_bearer.content[0].text == "ok"
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert "sk-gw" not in str(caught.value.body)


async def test_errors_have_anthropics_shape_and_statuses() -> None:
    cluster = FakeCluster(
        {"chat": MockConfig(chunks=("ok",))},
        errors={
            "busy": errors.CapacityExhaustedError("busy", retry_after_s=3.0),
            "limited": errors.RateLimitedError("slow down", provider="mock", retry_after_s=7.0),
        },
    )
    async with open_gateway(cluster) as url, httpx.AsyncClient() as http:
        busy = await http.post(
            f"{url}/v1/messages", json={"model": "busy", "max_tokens": 8, "messages": HI}
        )
        limited = await http.post(
            f"{url}/v1/messages", json={"model": "limited", "max_tokens": 8, "messages": HI}
        )
        missing = await http.post(f"{url}/v1/messages", json={"model": "chat", "messages": HI})
        unknown = await http.post(
            f"{url}/v1/messages", json={"model": "nope", "max_tokens": 8, "messages": HI}
        )
        not_json = await http.post(f"{url}/v1/messages", content=b"{")
    assert busy.status_code == 529
    assert busy.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }
    assert busy.headers["retry-after"] == "3"
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.headers["retry-after"] == "7"
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    assert not_json.status_code == 400
    assert not_json.json()["type"] == "error"


async def test_error_after_stream_began_is_an_error_event(default_cluster: FakeCluster) -> None:
    texts = []
    async with open_gateway(default_cluster) as url, _client(url) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(model="midfail", max_tokens=8, messages=HI) as s:
                async for event in s:
                    if event.type == "text":
                        texts.append(event.text)
    assert texts == ["x", "y"]
    assert caught.value.body["error"]["type"] == "api_error"


async def test_tool_history_becomes_tool_messages(default_cluster: FakeCluster) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "call the tool", "signature": "sig"},
                {"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    async with open_gateway(default_cluster) as url, _client(url) as client:
        await client.messages.create(model="chat", max_tokens=8, messages=messages)  # type: ignore[arg-type]
    batch = default_cluster.records[0].batch
    assert [m.role for m in batch.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.USER]
    call = batch.messages[1].tool_calls[0]
    assert call["id"] == "toolu_1"
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert batch.messages[1].content == "checking"
    assert (batch.messages[2].tool_call_id, batch.messages[2].content) == ("toolu_1", "sunny")


async def test_a_feature_the_target_cannot_honour_is_refused(default_cluster: FakeCluster) -> None:
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    async with open_gateway(default_cluster) as url, _client(url) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(model="chat", max_tokens=8, messages=HI, tools=tools)  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError) as thinking:
            await client.messages.create(
                model="chat",
                max_tokens=2048,
                messages=HI,
                thinking={"type": "enabled", "budget_tokens": 1024},
            )
    assert "'tools'" in caught.value.body["error"]["message"]
    assert "mock runtime" in caught.value.body["error"]["message"]
    assert "'thinking'" in thinking.value.body["error"]["message"]
    assert default_cluster.records == []
