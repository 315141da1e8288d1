"""A mock Anthropic Messages API on loopback: ``POST /v1/messages``, JSON and SSE.

Content is derived from the request so tests can assert exact text:

- the answer is ``"Echo: <text of the last user message>"``, streamed one word per
  ``content_block_delta`` (``"Echo:"``, ``" hello"``, …); ``max_tokens`` cuts it to that
  many words with ``stop_reason="max_tokens"``. A structured-output request
  (``output_config.format`` or the beta ``output_format``) is answered with JSON built
  from its schema (``schema_answer``).
- with ``tools`` (and ``tool_choice`` not ``none``) the model calls the first (or the
  named) tool with input ``{"input": <last user text>}``, streamed as two
  ``input_json_delta`` pieces, ``stop_reason="tool_use"``.
- usage: ``input_tokens`` = words of the system prompt and every message (image blocks
  count 1); ``output_tokens`` = words sent (a tool call counts 1). ``cache_read_tokens``
  and ``cache_creation_tokens`` are attributes tests may set. Streams report input and
  cache counts in ``message_start`` and the output count in ``message_delta``, as
  Anthropic does.
- a prompt whose words plus ``max_tokens`` exceed ``context_window`` gets Anthropic's 400
  ``prompt is too long``; a last user message containing ``blocked_word`` is answered
  with ``stop_reason="refusal"`` and no text.
- prefill: when the last message is the assistant's and the answer starts with its text,
  only the rest of the answer is sent (as Anthropic continues a prefilled turn).

Requests need ``anthropic-version`` (400 without it, as upstream); ``require_api_key``
checks ``x-api-key``. Besides the base faults, :meth:`MockAnthropicServer.error_event_after`
queues a mid-stream ``error`` event (``overloaded_error`` by default), and
``inject_status(529)`` answers with Anthropic's ``overloaded_error`` body.
"""

from __future__ import annotations

import collections
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from ._mock_server import (
    Fault,
    JSONReply,
    MockProviderServer,
    RecordedRequest,
    Reply,
    StreamReply,
    open_mock_server,
    sse_frame,
)
from ._schema import schema_answer

__all__ = ["MockAnthropicServer", "mock_anthropic"]

_WORDS = re.compile(r"\s*\S+")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _text_of(content: Any) -> tuple[str, int]:
    """The text of a message's content (string or blocks) and its image-block count."""
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    for block in content or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "image":
            images += 1
        elif kind == "tool_result":
            inner, inner_images = _text_of(block.get("content") or "")
            texts.append(inner)
            images += inner_images
    return " ".join(t for t in texts if t), images


def _system_text(system: Any) -> str:
    return _text_of(system)[0] if system else ""


class MockAnthropicServer(MockProviderServer):
    """Anthropic's Messages wire format; see the module docstring for the content rules."""

    provider = "anthropic"

    def __init__(self, *, context_window: int = 200_000, blocked_word: str = "FORBIDDEN") -> None:
        super().__init__()
        self.context_window = context_window
        self.blocked_word = blocked_word
        self.cache_read_tokens = 0
        self.cache_creation_tokens = 0
        self._error_events: collections.deque[tuple[int, str, str]] = collections.deque()
        self.add_route("POST", "/v1/messages", self.messages)

    # -- faults -------------------------------------------------------------------------
    def error_event_after(
        self, n_deltas: int, error_type: str = "overloaded_error", message: str = "Overloaded"
    ) -> None:
        """The next stream sends ``n_deltas`` text deltas, then an ``error`` event, and ends."""
        self._error_events.append((n_deltas, error_type, message))

    # -- provider hooks -----------------------------------------------------------------
    def error_body(self, status: int, message: str, *, type: str, code: str | None) -> Any:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else type)
        return {"type": "error", "error": {"type": kind, "message": message}}

    def presented_key(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-api-key")

    def malformed_frame(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": \n\n'

    def status_for_fault(self, fault: Fault) -> JSONReply:
        reply = super().status_for_fault(fault)
        if fault.body is None:
            message = "Overloaded" if fault.status == 529 else f"injected {fault.status}"
            body = self.error_body(fault.status, message, type="api_error", code=None)
            reply = JSONReply(status=reply.status, body=body, headers=reply.headers)
        return reply

    # -- the route ----------------------------------------------------------------------
    async def messages(self, request: RecordedRequest) -> Reply:
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        body = request.json or {}
        if not isinstance(body.get("max_tokens"), int):
            return self._error(400, "max_tokens: Field required")
        input_tokens, last_user = self._read_prompt(body)
        wanted = input_tokens + int(body["max_tokens"])
        if wanted > self.context_window:
            return self._error(
                400,
                f"prompt is too long: {wanted} tokens > {self.context_window} maximum",
            )
        tool = self._tool_to_call(body)
        if self.blocked_word and self.blocked_word in last_user:
            words: list[str] = []
            stop = "refusal"
        elif tool is not None:
            words, stop = [], "tool_use"
        else:
            words = _WORDS.findall(self._answer_text(body, last_user))
            stop = "end_turn"
            if len(words) > body["max_tokens"]:
                words, stop = words[: body["max_tokens"]], "max_tokens"
        output = len(words) + (1 if tool is not None else 0)
        if body.get("stream"):
            return self._stream_reply(body, words, tool, last_user, stop, input_tokens, output)
        content: list[dict[str, Any]] = []
        if words:
            content.append({"type": "text", "text": "".join(words)})
        if tool is not None:
            content.append(_tool_use(tool, last_user))
        return JSONReply(
            body={
                "id": "msg_mock",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", ""),
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": self._usage(input_tokens, output),
            }
        )

    def _stream_reply(
        self,
        body: dict[str, Any],
        words: list[str],
        tool: str | None,
        last_user: str,
        stop: str,
        input_tokens: int,
        output: int,
    ) -> Reply:
        def event(name: str, **data: Any) -> bytes:
            return sse_frame({"type": name, **data}, event=name)

        start = {
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(input_tokens, 1),
        }
        frames = [event("message_start", message=start)]
        text_start = event(
            "content_block_start", index=0, content_block={"type": "text", "text": ""}
        )
        if self._error_events:
            n, error_type, message = self._error_events.popleft()
            deltas = [_text_delta(event, w) for w in words[:n]]
            error = event("error", error={"type": error_type, "message": message})
            return StreamReply(frames=[*frames, text_start, event("ping"), *deltas, error])
        block = 0
        if words or tool is None:
            frames += [text_start, event("ping")]
            frames += [_text_delta(event, w) for w in words]
            frames.append(event("content_block_stop", index=0))
            block = 1
        if tool is not None:
            call = _tool_use(tool, last_user)
            frames.append(
                event(
                    "content_block_start",
                    index=block,
                    content_block={**call, "input": {}},
                )
            )
            args = _json(call["input"])
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                frames.append(event("content_block_delta", index=block, delta=delta))
            frames.append(event("content_block_stop", index=block))
        frames.append(event("future_event_type", detail="clients must ignore this"))
        frames.append(
            event(
                "message_delta",
                delta={"stop_reason": stop, "stop_sequence": None},
                usage={"output_tokens": output},
            )
        )
        frames.append(event("message_stop"))
        return StreamReply(frames=frames)

    # -- helpers ------------------------------------------------------------------------
    def _read_prompt(self, body: dict[str, Any]) -> tuple[int, str]:
        tokens = len(_system_text(body.get("system")).split())
        last_user = ""
        for message in body.get("messages") or ():
            text, images = _text_of(message.get("content"))
            tokens += len(text.split()) + images
            if message.get("role") == "user":
                last_user = text
        return tokens, last_user

    def _answer_text(self, body: dict[str, Any], last_user: str) -> str:
        config = body.get("output_config") or {}
        fmt = config.get("format") or body.get("output_format") or {}
        if fmt.get("type") == "json_schema":
            return schema_answer(fmt.get("schema"), last_user)
        answer = f"Echo: {last_user}".rstrip()
        # prefill: a trailing assistant turn is the start of the answer; continue after it
        messages = body.get("messages") or ()
        if messages and messages[-1].get("role") == "assistant":
            prefix, _images = _text_of(messages[-1].get("content"))
            if prefix and answer.startswith(prefix):
                return answer[len(prefix) :]
        return answer

    def _tool_to_call(self, body: dict[str, Any]) -> str | None:
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        if not tools or choice.get("type") == "none":
            return None
        if choice.get("type") == "tool":
            return str(choice["name"])
        return str(tools[0]["name"])

    def _usage(self, input_tokens: int, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
        }

    def _error(self, status: int, message: str) -> JSONReply:
        body = self.error_body(status, message, type="invalid_request_error", code=None)
        return JSONReply(status=status, body=body)


def _text_delta(event: Any, word: str) -> bytes:
    return event("content_block_delta", index=0, delta={"type": "text_delta", "text": word})


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def _tool_use(tool: str, last_user: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_mock_0", "name": tool, "input": {"input": last_user}}


@asynccontextmanager
async def mock_anthropic(**kwargs: Any) -> AsyncIterator[MockAnthropicServer]:
    """Serve a :class:`MockAnthropicServer` on loopback: ``async with mock_anthropic() as s``.

    Point clients at ``f"{server.url}/v1/"`` (the runner's ``base_url``).
    """
    async with open_mock_server(MockAnthropicServer(**kwargs)) as server:
        yield server
