"""The mock Anthropic Messages server over real loopback HTTP."""

from __future__ import annotations

import json

import httpx

from atomr_infer_testkit import mock_anthropic

HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "k"}
BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "hello there"}],
}


def _events(text: str) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        name = lines[0].removeprefix("event: ")
        out.append((name, json.loads(lines[1].removeprefix("data: "))))
    return out


async def test_json_answer_echoes_with_usage() -> None:
    async with mock_anthropic() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.cache_read_tokens = 7
        resp = await client.post("/v1/messages", json=BODY, headers=HEADERS)
    data = resp.json()
    assert resp.status_code == 200
    assert data["content"] == [{"type": "text", "text": "Echo: hello there"}]
    assert data["stop_reason"] == "end_turn"
    assert data["usage"] == {
        "input_tokens": 4,
        "output_tokens": 3,
        "cache_read_input_tokens": 7,
        "cache_creation_input_tokens": 0,
    }


async def test_stream_event_sequence() -> None:
    async with mock_anthropic() as server, httpx.AsyncClient(base_url=server.url) as client:
        resp = await client.post("/v1/messages", json={**BODY, "stream": True}, headers=HEADERS)
    events = _events(resp.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "future_event_type",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == (
        "Echo: hello there"
    )
    assert events[0][1]["message"]["usage"]["input_tokens"] == 4
    assert events[-2][1]["usage"] == {"output_tokens": 3}


async def test_tool_use_stream_sends_input_json_deltas() -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    body = {**BODY, "stream": True, "tools": tools}
    async with mock_anthropic() as server, httpx.AsyncClient(base_url=server.url) as client:
        resp = await client.post("/v1/messages", json=body, headers=HEADERS)
    events = _events(resp.text)
    pieces = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads("".join(pieces)) == {"input": "hello there"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_faults_errors_and_headers() -> None:
    async with (
        mock_anthropic(context_window=50) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        server.inject_status(529)
        overloaded = await client.post("/v1/messages", json=BODY, headers=HEADERS)
        no_version = await client.post("/v1/messages", json=BODY, headers={"x-api-key": "k"})
        too_long = await client.post(
            "/v1/messages", json={**BODY, "max_tokens": 60}, headers=HEADERS
        )
        server.require_api_key("right")
        unauthorized = await client.post("/v1/messages", json=BODY, headers=HEADERS)
        server.require_api_key(None)
        server.error_event_after(1)
        short = {**BODY, "stream": True, "max_tokens": 10}
        stream = await client.post("/v1/messages", json=short, headers=HEADERS)
    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert no_version.status_code == 400
    assert too_long.json()["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 64 tokens > 50 maximum",
    }
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["type"] == "authentication_error"
    events = _events(stream.text)
    assert [n for n, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1]["error"]["type"] == "overloaded_error"
