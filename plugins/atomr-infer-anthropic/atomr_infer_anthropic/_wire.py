"""Anthropic Messages API wire format, SDK-free and sans-IO.

Pure functions between core values and JSON: :func:`build_request_body` turns an
``ExecuteBatch`` into a ``/v1/messages`` body; :func:`parse_message` lifts a JSON answer
into ``TokenChunk`` values; :class:`StreamState` lifts SSE events one by one;
:func:`refine_error` and :func:`error_for` turn error bodies and ``error`` events into
typed errors; :class:`AnthropicProvider` is the engine's ``Provider`` built from them
(URL, headers, passthrough bodies). Nothing here does I/O or reads a clock.

Fixes against the original: unknown events are ignored (new event types do not break
old clients), ``message_start`` usage is kept and merged with ``message_delta``'s, cache
reads and writes are counted, and mid-stream ``error`` events are classified like status
codes (``overloaded_error`` is a retryable :class:`ServerError`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from atomr_infer_remote import ProviderRequest, SSEEvent

if TYPE_CHECKING:
    from ._config import AnthropicConfig

from atomr_infer_core import (
    ExecuteBatch,
    FinishReason,
    ImageBase64Part,
    ImageUrlPart,
    Message,
    RequestKind,
    Role,
    Secret,
    TextPart,
    TokenChunk,
    TokenUsage,
)
from atomr_infer_core.errors import (
    BadRequestError,
    ContextLengthExceededError,
    ForbiddenError,
    InferenceError,
    MalformedStreamError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    UnauthorizedError,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DIALECT",
    "AnthropicProvider",
    "StreamState",
    "build_request_body",
    "error_for",
    "map_stop_reason",
    "parse_message",
    "parse_usage",
    "refine_error",
]

#: sent when the request sets no ``max_tokens`` (Anthropic requires the field)
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


# --------------------------------------------------------------------------- request


def build_request_body(
    batch: ExecuteBatch, *, model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/messages`` for ``batch``.

    System and developer messages are hoisted into ``system``; tool results become
    ``tool_result`` blocks in a user turn; consecutive turns of one role are merged.
    Raises BadRequestError for what the Messages API cannot express (``n > 1``,
    embeddings, tool-call arguments that are not a JSON object).
    """
    if batch.kind is RequestKind.EMBEDDING:
        raise BadRequestError("Anthropic has no embeddings endpoint", param="input")
    sampling = batch.sampling
    if sampling.n != 1:
        raise BadRequestError(
            f"Anthropic returns one choice per request; n={sampling.n} is not supported",
            param="n",
        )
    messages = batch.messages or (Message(role=Role.USER, content=batch.prompt or ""),)
    system, turns = _translate_messages(messages)
    body: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": sampling.max_tokens or default_max_tokens,
    }
    if system:
        body["system"] = system
    for key, value in (
        ("temperature", sampling.temperature),
        ("top_p", sampling.top_p),
        ("top_k", sampling.top_k),
    ):
        if value is not None:
            body[key] = value
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    if batch.stream:
        body["stream"] = True
    if batch.tools:
        body["tools"] = [_tool(t) for t in batch.tools]
    if batch.tool_choice is not None:
        choice = _tool_choice(batch.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    if batch.user:
        body["metadata"] = {"user_id": batch.user}
    output_format = _output_format(batch.response_format)
    if output_format is not None:
        body["output_config"] = {"format": output_format}
    body.update(batch.extra)
    return body


def _output_format(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as Anthropic's structured-output ``format``.

    ``json_schema`` carries its schema; ``json_object`` asks for any JSON object. Raises
    BadRequestError for a json_schema without a schema object (nothing to constrain to).
    """
    kind = (response_format or {}).get("type")
    if kind == "json_object":
        return {"type": "json_schema", "schema": {"type": "object"}}
    if kind != "json_schema":
        return None
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    if not isinstance(schema, Mapping):
        raise BadRequestError(
            "response_format.json_schema.schema must be a JSON Schema object",
            param="response_format.json_schema.schema",
        )
    return {"type": "json_schema", "schema": dict(schema)}


def _translate_messages(
    messages: Iterable[Message],
) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if msg.role in (Role.SYSTEM, Role.DEVELOPER):
            system.append(msg.text)
            continue
        role = "assistant" if msg.role is Role.ASSISTANT else "user"
        blocks = _blocks(msg, i)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + blocks
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return "\n".join(s for s in system if s), turns


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _blocks(msg: Message, position: int) -> list[dict[str, Any]]:
    if msg.role is Role.TOOL:
        return [
            {
                "type": "tool_result",
                "tool_use_id": msg.tool_call_id or "",
                "content": _content_blocks(msg.content),
            }
        ]
    blocks = _content_blocks(msg.content)
    for call in msg.tool_calls or ():
        blocks.append(_tool_use(call, position))
    return blocks


def _content_blocks(content: str | tuple[Any, ...]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, ImageBase64Part):
            out.append(_image_base64(part.mime, part.data))
        elif isinstance(part, ImageUrlPart):
            match = _DATA_URL.match(part.url)
            if match:
                out.append(_image_base64(match["mime"], match["data"]))
            else:
                out.append({"type": "image", "source": {"type": "url", "url": part.url}})
    return out


def _image_base64(mime: str, data: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}


def _tool_use(call: Mapping[str, Any], position: int) -> dict[str, Any]:
    fn = call.get("function") or {}
    raw = fn.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise BadRequestError(
            f"tool call {call.get('id')!r} has arguments that are not a JSON object; "
            "Anthropic needs a JSON object as tool input",
            param=f"messages[{position}].tool_calls",
        )
    return {
        "type": "tool_use",
        "id": call.get("id") or "",
        "name": fn.get("name") or "",
        "input": arguments,
    }


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    if tool.get("type", "function") != "function" or "function" not in tool:
        return dict(tool)  # already Anthropic-shaped (or a server tool): pass through
    fn = tool["function"]
    out: dict[str, Any] = {
        "name": fn["name"],
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        return {
            "auto": {"type": "auto"},
            "required": {"type": "any"},
            "none": {"type": "none"},
        }.get(choice)
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        if isinstance(fn, Mapping) and fn.get("name"):
            return {"type": "tool", "name": fn["name"]}
        return dict(choice)
    return None


# --------------------------------------------------------------------------- answers


def map_stop_reason(reason: str | None) -> FinishReason | None:
    """Anthropic's ``stop_reason`` as a FinishReason (unknown reasons are ``stop``)."""
    if reason is None:
        return None
    return _STOP_REASONS.get(reason, FinishReason.STOP)


def parse_usage(usage: Mapping[str, Any], base: TokenUsage | None = None) -> TokenUsage:
    """Anthropic usage as TokenUsage, fields absent from ``usage`` kept from ``base``.

    Anthropic's ``input_tokens`` excludes cache reads and writes; core's
    ``input_tokens`` includes cache reads (as ``cached_tokens``) and bills writes
    separately (``cache_creation_tokens``).
    """
    base = base or TokenUsage()
    uncached = base.input_tokens - base.cached_tokens
    uncached = int(usage.get("input_tokens") or 0) if "input_tokens" in usage else uncached
    cached = base.cached_tokens
    if "cache_read_input_tokens" in usage:
        cached = int(usage.get("cache_read_input_tokens") or 0)
    created = base.cache_creation_tokens
    if "cache_creation_input_tokens" in usage:
        created = int(usage.get("cache_creation_input_tokens") or 0)
    output = base.output_tokens
    if "output_tokens" in usage:
        output = int(usage.get("output_tokens") or 0)
    return TokenUsage(
        input_tokens=uncached + cached,
        output_tokens=output,
        cached_tokens=cached,
        cache_creation_tokens=created,
    )


def parse_message(body: Mapping[str, Any], *, request_id: str = "") -> list[TokenChunk]:
    """The chunks of a non-streamed ``message`` answer (one chunk: text, tools, usage)."""
    if body.get("type") == "error":
        raise error_for(body.get("error") or {})
    content = body.get("content")
    if not isinstance(content, list):
        raise MalformedStreamError("Anthropic answer has no content list; is the endpoint right?")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if block.get("type") == "thinking":
            thoughts.append(block.get("thinking") or "")
        elif block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "index": len(calls),
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name") or "",
                        "arguments": json.dumps(block.get("input") or {}, separators=(",", ":")),
                    },
                }
            )
    return [
        TokenChunk(
            request_id=request_id,
            text_delta="".join(texts),
            reasoning_delta="".join(thoughts),
            tool_call_deltas=tuple(calls) or None,
            usage=parse_usage(body.get("usage") or {}),
            finish_reason=map_stop_reason(body.get("stop_reason")) or FinishReason.STOP,
        )
    ]


@attrs.define
class StreamState:
    """Per-request state of a streamed answer; feed it events in order.

    ``usage`` is the merged total so far (``message_start`` then each ``message_delta``);
    chunks carry it cumulatively, as core's ``TokenChunk.usage`` requires.
    """

    request_id: str = ""
    usage: TokenUsage | None = None
    #: content-block index → tool-call index (OpenAI tool calls count from 0)
    tool_blocks: dict[int, int] = attrs.Factory(dict)
    #: a ``message_delta`` carried the stop reason: the answer is complete
    stopped: bool = False

    def feed(self, event: str | None, data: str) -> list[TokenChunk]:
        """The chunks one SSE event yields; raises a typed error for an ``error`` event."""
        if not data.strip():
            return []
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise MalformedStreamError(
                f"Anthropic sent an SSE event that is not JSON ({event or 'message'}): {exc}"
            ) from None
        if not isinstance(payload, dict):
            raise MalformedStreamError("Anthropic sent an SSE event whose data is not an object")
        kind = payload.get("type") or event
        handler = _HANDLERS.get(kind or "")
        return handler(self, payload) if handler else []  # ping and unknown events: nothing

    def _message_start(self, payload: Mapping[str, Any]) -> list[TokenChunk]:
        message = payload.get("message") or {}
        self.usage = parse_usage(message.get("usage") or {}, self.usage)
        return []

    def _block_start(self, payload: Mapping[str, Any]) -> list[TokenChunk]:
        block = payload.get("content_block") or {}
        if block.get("type") == "tool_use":
            index = len(self.tool_blocks)
            self.tool_blocks[int(payload.get("index", index))] = index
            delta = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name") or "", "arguments": ""},
            }
            return [TokenChunk(request_id=self.request_id, tool_call_deltas=(delta,))]
        if block.get("type") == "text" and block.get("text"):
            return [TokenChunk(request_id=self.request_id, text_delta=block["text"])]
        return []

    def _block_delta(self, payload: Mapping[str, Any]) -> list[TokenChunk]:
        delta = payload.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [TokenChunk(request_id=self.request_id, text_delta=delta["text"])]
        if delta.get("type") == "thinking_delta" and delta.get("thinking"):
            return [TokenChunk(request_id=self.request_id, reasoning_delta=delta["thinking"])]
        if delta.get("type") == "input_json_delta":
            tool = self.tool_blocks.get(int(payload.get("index", -1)))
            if tool is None or not delta.get("partial_json"):
                return []
            call = {"index": tool, "function": {"arguments": delta["partial_json"]}}
            return [TokenChunk(request_id=self.request_id, tool_call_deltas=(call,))]
        return []  # signature and citation deltas are not part of the answer

    def _message_delta(self, payload: Mapping[str, Any]) -> list[TokenChunk]:
        self.usage = parse_usage(payload.get("usage") or {}, self.usage)
        reason = map_stop_reason((payload.get("delta") or {}).get("stop_reason"))
        self.stopped = self.stopped or reason is not None
        return [TokenChunk(request_id=self.request_id, usage=self.usage, finish_reason=reason)]

    def _error(self, payload: Mapping[str, Any]) -> list[TokenChunk]:
        raise error_for(payload.get("error") or {})


_HANDLERS = {
    "message_start": StreamState._message_start,
    "content_block_start": StreamState._block_start,
    "content_block_delta": StreamState._block_delta,
    "message_delta": StreamState._message_delta,
    "error": StreamState._error,
}


# --------------------------------------------------------------------------- errors

_TOKENS = re.compile(r"(\d[\d,]*)\s*tokens?\s*>\s*(\d[\d,]*)")
_SUM = re.compile(r"(\d[\d,]*)\s*\+\s*(\d[\d,]*)\s*>\s*(\d[\d,]*)")
_TOO_LONG = ("prompt is too long", "context length", "context limit", "too long", "context window")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _context_error(message: str) -> ContextLengthExceededError:
    tokens = limit = None
    if match := _SUM.search(message):
        tokens, limit = _int(match[1]) + _int(match[2]), _int(match[3])
    elif match := _TOKENS.search(message):
        tokens, limit = _int(match[1]), _int(match[2])
    return ContextLengthExceededError(
        f"Anthropic: {message} (shorten the conversation or lower max_tokens)",
        tokens=tokens,
        max_tokens=limit,
    )


def error_for(error: Mapping[str, Any], *, retry_after: float | None = None) -> InferenceError:
    """The typed error for Anthropic's ``{"type": ..., "message": ...}`` error object,
    as a mid-stream ``error`` event carries it (unknown types are server errors)."""
    refined = _known_error(error, status=None, retry_after=retry_after)
    assert refined is not None  # with no status every type maps to an error
    return refined


def _known_error(
    error: Mapping[str, Any], *, status: int | None, retry_after: float | None
) -> InferenceError | None:
    kind = str(error.get("type") or "")
    message = str(error.get("message") or kind or "unknown error")
    text = f"Anthropic {kind or 'error'}: {message}"
    lowered = message.lower()
    if kind == "invalid_request_error":
        if any(marker in lowered for marker in _TOO_LONG):
            return _context_error(message)
        return BadRequestError(text)
    if kind == "authentication_error":
        return UnauthorizedError(f"{text} (check the deployment's api_key)")
    if kind == "permission_error":
        return ForbiddenError(f"{text} (the API key may not use this model or feature)")
    if kind == "not_found_error":
        return NotFoundError(text)
    if kind == "request_too_large":
        return PayloadTooLargeError(text)
    if kind == "rate_limit_error":
        return RateLimitedError(text, provider="anthropic", retry_after_s=retry_after)
    if kind == "billing_error":
        return QuotaExceededError(f"{text} (check the account's billing)", provider="anthropic")
    if kind == "timeout_error":
        return RequestTimeoutError(text, phase="first_byte")
    if kind == "overloaded_error":
        return ServerError(
            f"{text} (Anthropic is overloaded; retry later)", status=status or 529, body=message
        )
    if status is not None and status < 500:
        return None
    # api_error, and error types newer than this code: treat as the server's fault
    return ServerError(text, status=status or 500, body=message)


def refine_error(
    status: int, body: Any, *, retry_after: float | None = None
) -> InferenceError | None:
    """A typed error from an Anthropic error body, or ``None`` to use the status table.

    ``body`` is the parsed JSON (or the raw text). Refines at any status: ``prompt is too
    long`` → ContextLengthExceededError, ``permission_error`` → ForbiddenError,
    ``overloaded_error`` (529) → ServerError. A 429 is left to the status table, which
    reads ``Retry-After`` from the headers, unless ``retry_after`` is given.
    """
    payload = _parsed(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
        return None
    if payload["error"].get("type") == "rate_limit_error" and retry_after is None:
        return None
    return _known_error(payload["error"], status=status, retry_after=retry_after)


def _parsed(body: Any) -> Any:
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError:
            return None
    return body


#: the Passthrough dialect this runtime sends as the client wrote it
DIALECT = "anthropic.messages"


class AnthropicProvider:
    """Anthropic's Messages API as the remote engine's ``Provider``."""

    name = "anthropic"

    def __init__(self, config: AnthropicConfig, model: str) -> None:
        self.config = config
        self.model = model
        self._url = config.messages_url()
        headers = {"anthropic-version": config.anthropic_version, **config.extra_headers}
        if config.anthropic_beta:
            headers["anthropic-beta"] = ",".join(config.anthropic_beta)
        self._headers = headers

    def passes_through(self, batch: ExecuteBatch) -> bool:
        """Whether ``batch`` carries a Messages body to send as the client wrote it."""
        return batch.passthrough is not None and batch.passthrough.dialect == DIALECT

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        headers = dict(self._headers)
        if self.passes_through(batch):
            assert batch.passthrough is not None
            # the client's own body: only the model is rewritten, unknown fields stay
            body = {**batch.passthrough.body, "model": self.model}
            beta = batch.passthrough.headers.get("anthropic-beta")
            if beta:
                headers["anthropic-beta"] = ",".join(
                    b for b in (headers.get("anthropic-beta"), beta) if b
                )
        else:
            body = build_request_body(
                batch, model=self.model, default_max_tokens=self.config.default_max_tokens
            )
        if credential is not None:
            headers["x-api-key"] = credential.reveal()
        if batch.stream:
            headers["accept"] = "text/event-stream"
        return ProviderRequest(url=self._url, headers=headers, json=body, stream=batch.stream)

    def parse_response(self, batch: ExecuteBatch, body: Any) -> Sequence[TokenChunk]:
        if not isinstance(body, dict):
            raise MalformedStreamError("anthropic: the answer is not a JSON object")
        return parse_message(body, request_id=batch.request_id)

    def stream_parser(self, batch: ExecuteBatch) -> _MessageStream:
        state = StreamState(request_id=batch.request_id)
        return _MessageStream(state, raw=self.passes_through(batch))

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        return refine_error(status, body)


class _MessageStream:
    """One streamed answer; finished at ``message_stop``.

    With ``raw`` (a passthrough) every event, ``ping`` and unknown ones included, also
    comes out as its own SSE frame in ``TokenChunk.raw``, its data untouched.
    """

    def __init__(self, state: StreamState, *, raw: bool = False) -> None:
        self.state = state
        self.finished = False
        self.raw = raw

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        if event.event == "message_stop":
            self.finished = True
            chunks: Sequence[TokenChunk] = []
        else:
            chunks = self.state.feed(event.event, event.data)
            if not event.event or event.event == "message":
                # a proxy that drops event names: the data's type still tells
                self.finished = _is_stop(event.data)
        if self.raw:
            return _with_frame(chunks, event, self.state.request_id)
        return chunks

    def end(self) -> Sequence[TokenChunk]:
        if self.state.stopped:
            return []  # a proxy that drops message_stop: the stop reason said it all
        raise MalformedStreamError(
            "anthropic: the stream ended before message_stop (the connection was cut); "
            "the answer is incomplete"
        )


def _frame(event: SSEEvent) -> bytes:
    head = f"event: {event.event}\n" if event.event and event.event != "message" else ""
    lines = "".join(f"data: {line}\n" for line in event.data.split("\n"))
    return f"{head}{lines}\n".encode()


def _with_frame(
    chunks: Sequence[TokenChunk], event: SSEEvent, request_id: str
) -> Sequence[TokenChunk]:
    frame = _frame(event)
    if not chunks:
        return [TokenChunk(request_id=request_id, raw=frame)]
    return [attrs.evolve(chunks[0], raw=frame), *chunks[1:]]


def _is_stop(data: str) -> bool:
    try:
        return bool(json.loads(data).get("type") == "message_stop")
    except (ValueError, AttributeError):
        return False
