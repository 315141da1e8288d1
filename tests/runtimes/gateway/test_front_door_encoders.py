"""The front doors' stream encoders, fed chunks directly (sans-IO)."""

from __future__ import annotations

import json
from typing import Any

from atomr_infer_core import ExecuteBatch, FinishReason, Message, TokenChunk, TokenUsage
from atomr_infer_runtimes.gateway._messages import MessagesRequest, MessagesStreamEncoder
from atomr_infer_runtimes.gateway._responses import (
    ResponsesRequest,
    ResponsesStreamEncoder,
    ResponseStore,
)

BATCH = ExecuteBatch(request_id="r", model="m", messages=(Message(role="user", content="hi"),))


def _call(index: int, **fields: Any) -> TokenChunk:
    return TokenChunk(tool_call_deltas=({"index": index, **fields},))


#: two tool calls whose argument pieces arrive interleaved, after some text
CHUNKS = [
    TokenChunk(text_delta="Let me look."),
    _call(0, id="c0", type="function", function={"name": "a", "arguments": ""}),
    _call(0, function={"arguments": '{"x":'}),
    _call(1, id="c1", type="function", function={"name": "b", "arguments": '{"y":'}),
    _call(0, function={"arguments": "1}"}),
    _call(1, function={"arguments": "2}"}),
    TokenChunk(
        usage=TokenUsage(input_tokens=3, output_tokens=5), finish_reason=FinishReason.TOOL_CALLS
    ),
]


def _sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in data.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "data" in lines:
            out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


def test_messages_encoder_routes_interleaved_tool_pieces_to_their_blocks() -> None:
    encoder = MessagesStreamEncoder(MessagesRequest(BATCH))
    events = _sse(b"".join(encoder.encode(c) for c in CHUNKS) + encoder.finish())
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    blocks: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = {**data["content_block"], "json": ""}
        elif name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            blocks[data["index"]]["json"] += data["delta"]["partial_json"]
        elif name == "content_block_delta":
            blocks[data["index"]]["text"] += data["delta"]["text"]
    assert blocks[0]["text"] == "Let me look."
    assert (blocks[1]["name"], json.loads(blocks[1]["json"])) == ("a", {"x": 1})
    assert (blocks[2]["name"], json.loads(blocks[2]["json"])) == ("b", {"y": 2})
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "tool_use"
    assert final["usage"]["input_tokens"] == 3
    assert final["usage"]["output_tokens"] == 5


def test_responses_encoder_keeps_interleaved_pieces_in_the_final_response() -> None:
    store = ResponseStore(clock=lambda: 0.0)
    request = ResponsesRequest(BATCH, conversation=(), store=True, echo={})
    encoder = ResponsesStreamEncoder(request, store)
    events = _sse(b"".join(encoder.encode(c) for c in CHUNKS) + encoder.finish())
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    calls = [item for item in final["output"] if item["type"] == "function_call"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("a", {"x": 1}),
        ("b", {"y": 2}),
    ]
    assert final["output"][0]["content"][0]["text"] == "Let me look."
    pieces = [d for name, d in events if name == "response.function_call_arguments.delta"]
    assert [(p["output_index"], p["delta"]) for p in pieces] == [
        (1, '{"x":'),
        (2, '{"y":'),
        (1, "1}"),
        (2, "2}"),
    ]
    stored = store.get(request.response_id)
    assert [c["function"]["name"] for c in stored[-1].tool_calls] == ["a", "b"]
