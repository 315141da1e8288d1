"""``previous_response_id`` across gateways: with a shared (redis) state backend a response
stored by one gateway is continued by another; with the memory backend it is this gateway's.

Two clusters on one real redis-server stand for two gateway processes (each has its own
state client and its own response store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx

from atomr_infer_core import Config, ImageUrlPart, Message, Secret, StateConfig, TextPart
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_runtimes.gateway._responses import decode_conversation, encode_conversation


@asynccontextmanager
async def _gateways(config: Config, plugin: Any, n: int) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        urls = []
        for _ in range(n):
            cluster = await stack.enter_async_context(
                open_cluster(config, plugins=[plugin], load_entry_points=False)
            )
            urls.append(await stack.enter_async_context(open_gateway(cluster, port=0)))
        yield urls


async def _respond(url: str, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await http.post("/v1/responses", json={"model": "chat", **body})


async def test_a_response_stored_by_one_gateway_is_continued_by_another(
    redis_server: Any, mock_plugin: Any, mock_deployment: Any
) -> None:
    state = StateConfig(backend="redis", url=Secret(redis_server.url))
    config = Config(state=state, deployments=[mock_deployment()])
    async with _gateways(config, mock_plugin, 2) as (first, second):
        stored = await _respond(first, input="remember the word teal", store=True)
        assert stored.status_code == 200, stored.text
        fresh = await _respond(second, input="which word?")
        continued = await _respond(
            second, input="which word?", previous_response_id=stored.json()["id"]
        )
        unknown = await _respond(second, input="which word?", previous_response_id="resp_nope")
    assert continued.status_code == 200, continued.text
    # the second gateway ran the whole conversation: the first turn and its answer too
    assert continued.json()["usage"]["input_tokens"] > fresh.json()["usage"]["input_tokens"]
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "previous_response_id"


async def test_with_the_memory_backend_a_stored_response_is_this_gateways(
    mock_plugin: Any, mock_deployment: Any
) -> None:
    config = Config(deployments=[mock_deployment()])
    async with _gateways(config, mock_plugin, 2) as (first, second):
        stored = await _respond(first, input="remember the word teal", store=True)
        here = await _respond(first, input="which?", previous_response_id=stored.json()["id"])
        there = await _respond(second, input="which?", previous_response_id=stored.json()["id"])
    assert here.status_code == 200, here.text
    assert there.status_code == 400
    assert there.json()["error"]["param"] == "previous_response_id"


def test_a_stored_conversation_round_trips_through_its_json() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    conversation = (
        Message(role="system", content="be brief"),
        Message(
            role="user",
            content=[
                TextPart(text="what is this?"),
                ImageUrlPart(url="https://x/y.png", detail="low"),
            ],
        ),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="42", tool_call_id="call_1", name="f"),
    )
    assert decode_conversation(encode_conversation(conversation)) == conversation
