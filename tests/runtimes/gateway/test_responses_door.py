"""The OpenAI Responses front door, driven with the official openai client and raw HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from atomr_infer_core import Role, errors
from atomr_infer_runtimes.gateway._responses import ResponseStore
from atomr_infer_testkit import MockConfig

from .conftest import FakeCluster, open_gateway


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="dummy", max_retries=0)


async def test_responses_create_plain(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        reply = await client.responses.create(
            model="chat", input="hi", instructions="be brief", max_output_tokens=64
        )
    assert reply.object == "response"
    assert reply.status == "completed"
    assert reply.output_text == "Hello, world!"
    assert reply.output[0].type == "message"
    assert reply.usage.input_tokens == 5
    assert reply.usage.output_tokens == 4
    assert reply.usage.total_tokens == 9
    assert reply.usage.output_tokens_details.reasoning_tokens == 0
    assert reply.usage.input_tokens_details.cached_tokens == 0
    batch = default_cluster.records[0].batch
    assert [(m.role, m.text) for m in batch.messages] == [
        (Role.SYSTEM, "be brief"),
        (Role.USER, "hi"),
    ]
    assert batch.sampling.max_tokens == 64


async def test_responses_cut_by_max_output_tokens_is_incomplete(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        reply = await client.responses.create(model="chat", input="hi", max_output_tokens=2)
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == "Hello,"


async def test_responses_stream_events(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        stream = await client.responses.create(model="chat", input="hi", stream=True)
        events = [event async for event in stream]
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "Hello, world!"
    )
    done = events[-1].response
    assert done.output_text == "Hello, world!"
    assert done.usage.total_tokens == 9
    assert done.usage.output_tokens_details.reasoning_tokens == 0


async def test_responses_stream_helper_accumulates(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        async with client.responses.stream(model="chat", input="hi") as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
    assert final.output_text == "Hello, world!"


async def test_previous_response_id_continues_a_stored_conversation(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url, _client(url) as client:
        first = await client.responses.create(model="chat", input="hi", instructions="first")
        second = await client.responses.create(
            model="chat", input="again", previous_response_id=first.id, instructions="second"
        )
        unstored = await client.responses.create(model="chat", input="x", store=False)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model="chat", input="again", previous_response_id=unstored.id
            )
    assert second.previous_response_id == first.id
    batch = default_cluster.records[1].batch
    assert [(m.role, m.text) for m in batch.messages] == [
        (Role.SYSTEM, "second"),
        (Role.USER, "hi"),
        (Role.ASSISTANT, "Hello, world!"),
        (Role.USER, "again"),
    ]
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "previous_response_id"
    assert "unknown or has expired" in caught.value.body["message"]


def test_store_is_bounded_and_evicts_the_least_recent() -> None:
    store = ResponseStore(capacity=2, clock=lambda: 0.0)
    store.put("a", ())
    store.put("b", ())
    store.get("a")
    store.put("c", ())
    assert len(store) == 2
    store.get("a")
    store.get("c")
    with pytest.raises(Exception, match="unknown or has expired"):
        store.get("b")


def test_stored_responses_expire_after_their_ttl() -> None:
    now = [100.0]
    store = ResponseStore(capacity=8, ttl=60.0, clock=lambda: now[0])
    store.put("a", ())
    now[0] = 159.9
    assert store.get("a") == ()
    now[0] = 160.0
    with pytest.raises(errors.BadRequestError, match="unknown or has expired") as caught:
        store.get("a")
    assert caught.value.param == "previous_response_id"
    assert "a" not in store


async def test_function_call_output_items_become_tool_messages(
    default_cluster: FakeCluster,
) -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "weather",
            "arguments": '{"city":"Oslo"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    async with open_gateway(default_cluster) as url, _client(url) as client:
        await client.responses.create(model="chat", input=items)  # type: ignore[arg-type]
    batch = default_cluster.records[0].batch
    assert [m.role for m in batch.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert batch.messages[1].tool_calls[0]["function"]["name"] == "weather"
    assert (batch.messages[2].tool_call_id, batch.messages[2].content) == ("call_1", "sunny")


async def test_unhonourable_features_are_refused_not_dropped(default_cluster: FakeCluster) -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    schema = {"type": "json_schema", "name": "x", "schema": {"type": "object"}}
    async with open_gateway(default_cluster) as url, httpx.AsyncClient() as http:
        replies = [
            await http.post(f"{url}/v1/responses", json={"model": "chat", "input": "hi", **extra})
            for extra in (
                {"tools": [tool]},
                {"text": {"format": schema}},
                {"tools": [{"type": "web_search"}]},
                {"input": [{"type": "item_reference", "id": "x"}]},
                {"brand_new_field": 1},
            )
        ]
    bodies = [r.json()["error"] for r in replies]
    assert [r.status_code for r in replies] == [400] * 5
    assert [b["code"] for b in bodies] == ["unsupported_parameter"] * 5
    assert [b["param"] for b in bodies] == [
        "tools",
        "text.format",
        "tools[0]",
        "input[0].type",
        "brand_new_field",
    ]
    assert default_cluster.records == []


async def test_error_after_stream_began_is_an_error_event() -> None:
    cluster = FakeCluster({"midfail": MockConfig(chunks=("x", "y", "z"), fail_after_chunks=2)})
    async with open_gateway(cluster) as url, _client(url) as client:
        stream = await client.responses.create(model="midfail", input="hi", stream=True)
        events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["x", "y"]
    assert events[-1].type == "error"
    assert events[-1].code == "upstream_error"
    assert "midfail" in events[-1].message
