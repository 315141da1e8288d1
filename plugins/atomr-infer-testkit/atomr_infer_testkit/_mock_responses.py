"""The mock OpenAI server's ``POST /v1/responses`` (the Responses API), JSON and events.

Content follows the chat rules of :mod:`._mock_openai`: the answer is ``"Echo: <text of
the last user message>"`` (one word per ``response.output_text.delta``), cut by
``max_output_tokens`` (status ``incomplete``, reason ``max_output_tokens``); with function
``tools`` (and ``tool_choice`` not ``none``) the model calls the first (or the named) one
with arguments ``{"input": <last user text>}``; ``text.format`` json_schema is answered
with JSON built from the schema. Usage: input tokens = words of ``instructions`` and every
item, output tokens = words sent (a call counts 1) plus ``reasoning_tokens``; cached and
reasoning counts come from the server's attributes. Responses are remembered by id, so
``previous_response_id`` must name one this server made (else OpenAI's 400); a
continuation without a new user message echoes the conversation's last one. Streams carry
one event type no client knows (``response.mock_future_event``), as new API versions do.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._mock_server import JSONReply, Reply, StreamReply, sse_frame
from ._schema import schema_answer

__all__ = ["responses_reply"]

_WORDS = re.compile(r"\s*\S+")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or () if isinstance(p, dict) and "text" in p)


def _read_input(body: dict[str, Any]) -> tuple[int, str]:
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    tokens = len(str(body.get("instructions") or "").split())
    last_user = ""
    for item in items or ():
        text = _text(item.get("content")) if item.get("type", "message") == "message" else ""
        text = text or str(item.get("output") or item.get("arguments") or "")
        tokens += len(text.split())
        if item.get("type", "message") == "message" and item.get("role") == "user":
            last_user = _text(item.get("content"))
    return tokens, last_user


def _tool(body: dict[str, Any]) -> str | None:
    tools = [t for t in body.get("tools") or () if t.get("type") == "function"]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict) and choice.get("name"):
        return str(choice["name"])
    return str(tools[0]["name"])


def _answer(body: dict[str, Any], last_user: str) -> str:
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return schema_answer(fmt.get("schema"), last_user)
    return f"Echo: {last_user}".rstrip()


def responses_reply(server: Any, body: dict[str, Any]) -> Reply:
    """The mock's answer to one ``/v1/responses`` body (see the module docstring)."""
    previous = body.get("previous_response_id")
    if previous is not None and previous not in server.response_ids:
        message = f"Previous response with id '{previous}' not found."
        error = {
            "message": message,
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
        return JSONReply(status=400, body={"error": error})
    input_tokens, last_user = _read_input(body)
    if previous is not None and not last_user:
        last_user = server.response_ids[previous]  # the conversation goes on
    tool = _tool(body)
    words = [] if tool is not None else _WORDS.findall(_answer(body, last_user))
    status, incomplete = "completed", None
    limit = body.get("max_output_tokens")
    if limit is not None and len(words) > int(limit):
        words, status, incomplete = (
            words[: int(limit)],
            "incomplete",
            {"reason": "max_output_tokens"},
        )
    response_id = f"resp_mock_{len(server.response_ids)}"
    server.response_ids[response_id] = last_user
    output_tokens = len(words) + (1 if tool else 0) + server.reasoning_tokens
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": server.cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": server.reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }
    output: list[dict[str, Any]] = []
    if words:
        part = {"type": "output_text", "text": "".join(words), "annotations": []}
        output.append(
            {
                "type": "message",
                "id": "msg_mock",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    if tool is not None:
        arguments = json.dumps({"input": last_user})
        output.append(
            {
                "type": "function_call",
                "id": "fc_mock_0",
                "call_id": "call_mock_0",
                "name": tool,
                "arguments": arguments,
                "status": "completed",
            }
        )
    response = {
        "id": response_id,
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "model": body.get("model", ""),
        "output": output,
        "previous_response_id": previous,
        "usage": usage,
        "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
    }
    if not body.get("stream"):
        return JSONReply(body=response)
    return StreamReply(frames=_events(response, words, tool))


def _events(response: dict[str, Any], words: list[str], tool: str | None) -> list[bytes]:
    sequence = iter(range(10_000))

    def event(name: str, **data: Any) -> bytes:
        return sse_frame({"type": name, "sequence_number": next(sequence), **data}, event=name)

    started = {**response, "status": "in_progress", "output": [], "usage": None}
    frames = [
        event("response.created", response=started),
        event("response.in_progress", response=started),
    ]
    index = 0
    if words:
        item = {
            "type": "message",
            "id": "msg_mock",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"item_id": "msg_mock", "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        frames += [
            event("response.output_item.added", output_index=0, item=item),
            event("response.content_part.added", part=part, **where),
        ]
        frames += [
            event("response.output_text.delta", delta=w, logprobs=[], **where) for w in words
        ]
        frames.append(event("response.mock_future_event", detail="clients must ignore this"))
        text = "".join(words)
        frames += [
            event("response.output_text.done", text=text, logprobs=[], **where),
            event("response.content_part.done", part={**part, "text": text}, **where),
            event("response.output_item.done", output_index=0, item=response["output"][0]),
        ]
        index = 1
    if tool is not None:
        done = response["output"][index]
        item = {**done, "arguments": "", "status": "in_progress"}
        where = {"item_id": done["id"], "output_index": index}
        half = len(done["arguments"]) // 2
        frames.append(event("response.output_item.added", output_index=index, item=item))
        for piece in (done["arguments"][:half], done["arguments"][half:]):
            frames.append(event("response.function_call_arguments.delta", delta=piece, **where))
        frames.append(
            event("response.function_call_arguments.done", arguments=done["arguments"], **where)
        )
        frames.append(event("response.output_item.done", output_index=index, item=done))
    name = "response.completed" if response["status"] == "completed" else "response.incomplete"
    frames.append(event(name, response=response))
    return frames
