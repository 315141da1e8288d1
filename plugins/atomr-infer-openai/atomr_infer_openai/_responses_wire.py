"""OpenAI's Responses API wire format, for a client that speaks it itself (a passthrough).

When a Responses client reaches an ``openai`` deployment, the gateway hands the runner the
client's own body (``ExecuteBatch.passthrough``, dialect ``openai.responses``): it goes to
``POST {base_url}/responses`` with only ``model`` rewritten, and the answer comes back as
the upstream sent it (``TokenChunk.raw``). These sans-IO parsers read what the runtime
layer still needs from it: text, function calls, usage (limits, budgets, metrics), the
finish reason, and errors (typed like status codes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from atomr_infer_core import ExecuteBatch, FinishReason, TokenChunk, TokenUsage
from atomr_infer_core.errors import InferenceError
from atomr_infer_remote import SSEEvent, classify_http_status

__all__ = [
    "DIALECT",
    "ResponsesStreamParser",
    "parse_responses_body",
    "passes_through",
    "responses_usage",
]

#: the Passthrough dialect the openai runtime sends to ``/responses``
DIALECT = "openai.responses"

_ERROR_STATUS = {
    "rate_limit_exceeded": 429,
    "invalid_request_error": 400,
    "invalid_prompt": 400,
    "context_length_exceeded": 400,
    "server_error": 500,
}


def passes_through(batch: ExecuteBatch) -> bool:
    """Whether ``batch`` carries a Responses body to send as the client wrote it."""
    return batch.passthrough is not None and batch.passthrough.dialect == DIALECT


def responses_usage(usage: Mapping[str, Any] | None) -> TokenUsage | None:
    """A Responses ``usage`` object (input/output tokens and their details) as TokenUsage."""
    if not isinstance(usage, Mapping):
        return None
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return TokenUsage(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=int(cached),
        reasoning_tokens=int(reasoning),
    )


def _finish(response: Mapping[str, Any], has_calls: bool) -> FinishReason:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return FinishReason.CONTENT_FILTER if reason == "content_filter" else FinishReason.LENGTH
    return FinishReason.TOOL_CALLS if has_calls else FinishReason.STOP


def _error(provider: str, error: Mapping[str, Any]) -> InferenceError:
    code = str(error.get("code") or error.get("type") or "server_error")
    body = json.dumps({"error": {"message": error.get("message"), "type": code, "code": code}})
    return classify_http_status(provider, _ERROR_STATUS.get(code, 500), {}, body)


def parse_responses_body(
    body: Mapping[str, Any], *, request_id: str, provider: str = "openai"
) -> list[TokenChunk]:
    """The chunks of a ``response`` object (text, function calls, usage, finish)."""
    if body.get("status") == "failed" and isinstance(body.get("error"), Mapping):
        raise _error(provider, body["error"])
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in body.get("output") or ():
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
        elif item.get("type") == "function_call":
            function = {"name": item.get("name") or "", "arguments": item.get("arguments") or ""}
            calls.append(
                {
                    "index": len(calls),
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": function,
                }
            )
    return [
        TokenChunk(
            request_id=request_id,
            text_delta="".join(texts),
            tool_call_deltas=tuple(calls) or None,
            usage=responses_usage(body.get("usage")),
            finish_reason=_finish(body, bool(calls)),
        )
    ]


def _frame(event: SSEEvent) -> bytes:
    head = f"event: {event.event}\n" if event.event and event.event != "message" else ""
    lines = "".join(f"data: {line}\n" for line in event.data.split("\n"))
    return f"{head}{lines}\n".encode()


@attrs.define
class ResponsesStreamParser:
    """Chunks from the Responses event stream; every event also as its own raw frame."""

    provider: str
    request_id: str
    finished: bool = False
    #: function-call item id → tool-call index
    calls: dict[str, int] = attrs.Factory(dict)

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        chunks = self._chunks(event.data) if event.data.strip() else []
        frame = _frame(event)
        if not chunks:
            return [TokenChunk(request_id=self.request_id, raw=frame)]
        return [attrs.evolve(chunks[0], raw=frame), *chunks[1:]]

    def end(self) -> Sequence[TokenChunk]:
        return ()

    def _chunks(self, data: str) -> list[TokenChunk]:
        payload = json.loads(data)
        kind = payload.get("type")
        rid = self.request_id
        if kind == "response.output_text.delta" and payload.get("delta"):
            return [TokenChunk(request_id=rid, text_delta=payload["delta"])]
        if kind == "response.output_item.added":
            item = payload.get("item") or {}
            if item.get("type") != "function_call":
                return []
            index = len(self.calls)
            self.calls[str(item.get("id"))] = index
            function = {"name": item.get("name") or "", "arguments": ""}
            delta = {
                "index": index,
                "id": item.get("call_id"),
                "type": "function",
                "function": function,
            }
            return [TokenChunk(request_id=rid, tool_call_deltas=(delta,))]
        if kind == "response.function_call_arguments.delta":
            index = self.calls.get(str(payload.get("item_id")))
            if index is None or not payload.get("delta"):
                return []
            delta = {"index": index, "function": {"arguments": payload["delta"]}}
            return [TokenChunk(request_id=rid, tool_call_deltas=(delta,))]
        if kind in ("response.completed", "response.incomplete"):
            self.finished = True
            response = payload.get("response") or {}
            usage = responses_usage(response.get("usage"))
            return [
                TokenChunk(
                    request_id=rid, usage=usage, finish_reason=_finish(response, bool(self.calls))
                )
            ]
        if kind == "response.failed":
            raise _error(self.provider, (payload.get("response") or {}).get("error") or {})
        if kind == "error":
            raise _error(self.provider, payload)
        return []
