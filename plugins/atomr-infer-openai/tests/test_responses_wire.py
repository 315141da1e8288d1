"""The Responses wire of a passthrough: chunks, usage and errors from the upstream's answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from atomr_infer_core import FinishReason, TokenUsage
from atomr_infer_core.errors import RateLimitedError, ServerError
from atomr_infer_openai._responses_wire import ResponsesStreamParser, parse_responses_body
from atomr_infer_remote import SSEEvent

USAGE = {
    "input_tokens": 9,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 6,
    "output_tokens_details": {"reasoning_tokens": 2},
}


def _event(name: str, **data: Any) -> SSEEvent:
    return SSEEvent(event=name, data=json.dumps({"type": name, **data}))


def test_a_response_body_becomes_one_chunk_with_text_calls_and_usage() -> None:
    body = {
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        ],
        "usage": USAGE,
    }
    [chunk] = parse_responses_body(body, request_id="r")
    assert chunk.text_delta == "Hi"
    assert chunk.tool_call_deltas == (
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": "{}"},
        },
    )
    assert chunk.usage == TokenUsage(
        input_tokens=9, output_tokens=6, cached_tokens=4, reasoning_tokens=2
    )
    assert chunk.finish_reason is FinishReason.TOOL_CALLS


def test_an_incomplete_response_finishes_with_length() -> None:
    body = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert parse_responses_body(body, request_id="r")[0].finish_reason is FinishReason.LENGTH


def test_every_event_keeps_its_frame_and_usage_is_read_at_the_end() -> None:
    parser = ResponsesStreamParser(provider="openai", request_id="r")
    events = [
        _event("response.created", response={"status": "in_progress"}),
        _event("response.output_text.delta", delta="He"),
        _event("response.some_future_event", detail=1),
        _event(
            "response.output_item.added",
            item={"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f"},
        ),
        _event("response.function_call_arguments.delta", item_id="fc_1", delta='{"a"'),
        _event("response.completed", response={"status": "completed", "usage": USAGE}),
    ]
    chunks = [c for e in events for c in parser.feed(e)]
    assert [c.raw for c in chunks] == [
        f"event: {e.event}\ndata: {e.data}\n\n".encode() for e in events
    ]
    assert [c.text_delta for c in chunks] == ["", "He", "", "", "", ""]
    assert chunks[3].tool_call_deltas[0]["id"] == "c1"
    assert chunks[4].tool_call_deltas == ({"index": 0, "function": {"arguments": '{"a"'}},)
    assert chunks[-1].usage.reasoning_tokens == 2
    assert chunks[-1].finish_reason is FinishReason.TOOL_CALLS
    assert parser.finished


def test_error_events_are_typed_like_status_codes() -> None:
    parser = ResponsesStreamParser(provider="openai", request_id="r")
    with pytest.raises(RateLimitedError):
        parser.feed(_event("error", code="rate_limit_exceeded", message="slow down"))
    failed = {"status": "failed", "error": {"code": "server_error", "message": "boom"}}
    with pytest.raises(ServerError):
        parser.feed(_event("response.failed", response=failed))
