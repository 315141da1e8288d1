"""The Anthropic Messages front door: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

A Messages body is translated onto the internal request path (a chat ``ExecuteBatch``)
for any deployment; the answer comes back as an Anthropic ``message`` or as Anthropic's
event sequence (``message_start``, ``ping``, ``content_block_start/delta/stop``,
``message_delta``, ``message_stop``). Errors use Anthropic's body
``{"type": "error", "error": {"type", "message"}}``; a shed request (503 on the OpenAI
door) is ``overloaded_error`` with status 529, as the anthropic SDK expects.

What a target runtime cannot honour is refused with 400 ``unsupported_parameter``
(:mod:`._features`); an ``anthropic`` deployment gets Anthropic-shaped tools, ``thinking``
and unknown top-level fields forwarded as sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from atomr_infer_core import (
    ContentPart,
    ExecuteBatch,
    FinishReason,
    ImageBase64Part,
    ImageUrlPart,
    Message,
    Passthrough,
    RequestKind,
    Role,
    SamplingParams,
    TextPart,
    Tokens,
    TokenUsage,
)
from atomr_infer_core.errors import InferenceError, NotFoundError, ServerError

from ._doors import DialectStreamEncoder, Headers, target_runtime, unsupported
from ._errors import error_headers
from ._features import check_features
from ._openai import ParsedRequest, _bad, _type_name

__all__ = ["CountTokensDoor", "MessagesDoor", "MessagesRequest"]

#: the runtime that speaks Messages: its deployments get the client's body as sent
_PASSTHROUGH_TARGET = "anthropic"
#: client headers forwarded with a passthrough body
_FORWARDED_HEADERS = (b"anthropic-beta",)

_STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.ERROR: "end_turn",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
#: fields the translation consumes; an anthropic target gets every other field as sent
_CONSUMED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
    }
)
#: translated for other targets (structured output), or hints that change where or how
#: fast the answer is made, never what it says: accepted for every target
_TRANSLATED = frozenset(
    {
        "output_config",
        "output_format",
        "cache_control",
        "service_tier",
        "inference_geo",
        "speed",
        "diagnostics",
        "workspace_id",
        "user_profile_id",
    }
)
#: where the Messages dialect spells each checked feature
_FEATURE_FIELDS = {
    "json_schema": "output_config.format",
    "json_object": "output_config.format",
    "reasoning": "thinking",
}


class MessagesRequest(ParsedRequest):
    """A parsed Messages body: the batch plus what rendering needs."""

    __slots__ = ("count_only", "estimate")

    def __init__(self, batch: ExecuteBatch, *, count_only: bool = False) -> None:
        super().__init__(batch)
        self.count_only = count_only
        self.estimate = batch.input_token_estimate()


# ---------------------------------------------------------------- request → batch


def _text_of_blocks(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(path, f"'{path}' must be a string or an array of text blocks")
    texts = []
    for i, block in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"{where}.type", f"'{where}' must be a text block")
        text = block.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", f"'{where}.text' must be a string")
        texts.append(text)
    return "\n".join(texts)


def _image(block: Mapping[str, Any], path: str) -> ContentPart:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{path}.source", f"'{path}.source' must be an object")
    kind = source.get("type")
    if kind == "base64":
        mime, data = source.get("media_type"), source.get("data")
        if not isinstance(mime, str) or not isinstance(data, str):
            raise _bad(f"{path}.source", f"'{path}.source' needs media_type and data strings")
        return ImageBase64Part(mime=mime, data=data)
    if kind == "url" and isinstance(source.get("url"), str):
        return ImageUrlPart(url=source["url"])
    raise _bad(f"{path}.source.type", f"'{path}.source.type' must be 'base64' or 'url'")


def _document(block: Mapping[str, Any], path: str, target: str | None) -> ContentPart | None:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        data = source.get("data")
        if not isinstance(data, str):
            raise _bad(f"{path}.source.data", f"'{path}.source.data' must be a string")
        title = block.get("title")
        return TextPart(text=f"{title}\n\n{data}" if isinstance(title, str) and title else data)
    if target == _PASSTHROUGH_TARGET:
        return None  # the body goes upstream as sent; the batch only feeds estimates
    raise unsupported(path, "a document block that is not plain text (PDF, file)", target)


def _tool_call(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    name, call_id = block.get("name"), block.get("id")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise _bad(path, f"'{path}' needs string 'id' and 'name'")
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise _bad(f"{path}.input", f"'{path}.input' must be an object")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, separators=(",", ":"))},
    }


def _tool_result(block: Mapping[str, Any], path: str, target: str | None) -> Message:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise _bad(f"{path}.tool_use_id", f"'{path}.tool_use_id' must be a string")
    content = block.get("content", "")
    parts: str | tuple[ContentPart, ...]
    if isinstance(content, str):
        parts = content
    elif isinstance(content, list):
        parts = tuple(
            p
            for j, b in enumerate(content)
            if (p := _content_part(b, f"{path}.content[{j}]", target)) is not None
        )
    else:
        raise _bad(f"{path}.content", f"'{path}.content' must be a string or an array of blocks")
    if block.get("is_error") is True:
        text = (
            parts
            if isinstance(parts, str)
            else "".join(p.text for p in parts if isinstance(p, TextPart))
        )
        parts = f"[tool error] {text}"
    return Message(role=Role.TOOL, content=parts, tool_call_id=call_id)


def _content_part(block: Any, path: str, target: str | None) -> ContentPart | None:
    if not isinstance(block, dict):
        raise _bad(path, f"'{path}' must be an object, got {_type_name(block)}")
    kind = block.get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise _bad(f"{path}.text", f"'{path}.text' must be a string")
        return TextPart(text=block["text"])
    if kind == "image":
        return _image(block, path)
    if kind == "document":
        return _document(block, path, target)
    if target == _PASSTHROUGH_TARGET:
        return None  # a block type newer than this gateway: kept in the body sent upstream
    raise unsupported(f"{path}.type", f"content blocks of type {kind!r}", target)


def _turn(raw: Any, i: int, target: str | None) -> list[Message]:
    """One Messages turn as core messages (tool results become ``tool`` messages)."""
    path = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise _bad(path, f"'{path}' must be an object, got {_type_name(raw)}")
    role = raw.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"{path}.role", f"'{path}.role' must be 'user' or 'assistant' (got {role!r})")
    content = raw.get("content")
    if isinstance(content, str):
        return [Message(role=role, content=content)]
    if not isinstance(content, list):
        raise _bad(f"{path}.content", f"'{path}.content' must be a string or an array of blocks")
    results: list[Message] = []
    parts: list[ContentPart] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{path}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result" and role == "user":
            results.append(_tool_result(block, where, target))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, where))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # the model's own earlier reasoning: only Anthropic models can read it
        elif (part := _content_part(block, where, target)) is not None:
            parts.append(part)
    out = list(results)
    if parts or calls or not results:
        text_only = all(isinstance(p, TextPart) for p in parts)
        value: Any = "".join(p.text for p in parts) if text_only else tuple(parts)  # type: ignore[union-attr]
        out.append(Message(role=role, content=value, tool_calls=calls or None))
    return out


def _tools(raw: Any, target: str | None) -> tuple[dict[str, Any], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise _bad("tools", "'tools' must be an array of objects")
    if target == "anthropic":
        return tuple(raw)  # Anthropic-shaped tools pass through the anthropic runtime
    out = []
    for i, tool in enumerate(raw):
        if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
            raise unsupported(f"tools[{i}]", f"the server tool {tool.get('type')!r}", target)
        name = tool.get("name")
        if not isinstance(name, str):
            raise _bad(f"tools[{i}].name", f"'tools[{i}].name' must be a string")
        function: dict[str, Any] = {"name": name, "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return tuple(out)


def _tool_choice(raw: Any, target: str | None) -> tuple[Any, bool]:
    """The OpenAI-shaped tool choice and whether parallel calls were disabled."""
    if raw is None:
        return None, False
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise _bad("tool_choice", "'tool_choice' must be an object with a 'type'")
    serial = raw.get("disable_parallel_tool_use") is True
    if target == "anthropic":
        return dict(raw), False
    kind = raw["type"]
    if kind == "tool":
        if not isinstance(raw.get("name"), str):
            raise _bad("tool_choice.name", "'tool_choice.name' must be a string")
        return {"type": "function", "function": {"name": raw["name"]}}, serial
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
    if mapped is None:
        raise _bad(
            "tool_choice.type", f"'tool_choice.type' {kind!r} is not auto, any, tool or none"
        )
    return mapped, serial


def _structured_output(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """``output_config.format`` (or the beta ``output_format``) as OpenAI's response_format."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else body.get("output_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise _bad("output_config.format", "'output_config.format' must be a json_schema format")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _bad("output_config.format.schema", "'output_config.format.schema' must be an object")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def _thinking(body: Mapping[str, Any], target: str | None) -> dict[str, Any]:
    """``thinking`` for the target: forwarded to Anthropic, an effort for OpenAI, else 400."""
    thinking = body.get("thinking")
    if thinking is None:
        return {}
    if not isinstance(thinking, dict):
        raise _bad("thinking", "'thinking' must be an object")
    if thinking.get("type") == "disabled":
        return {"thinking": thinking} if target == "anthropic" else {}
    if target == "anthropic":
        return {"thinking": thinking}
    if target in ("openai", "litellm"):
        budget = thinking.get("budget_tokens")
        budget = budget if isinstance(budget, int) else 8192
        effort = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
        return {"reasoning_effort": effort}
    raise unsupported("thinking", "extended thinking", target)


def _passthrough(body: Mapping[str, Any], headers: Mapping[bytes, bytes]) -> Passthrough:
    forwarded = {
        name.decode(): value.decode("latin1")
        for name in _FORWARDED_HEADERS
        if (value := headers.get(name)) is not None
    }
    return Passthrough(dialect="anthropic.messages", body=body, headers=forwarded)


def _system(body: Mapping[str, Any]) -> list[Message]:
    system = body.get("system")
    if system is None:
        return []
    return [Message(role=Role.SYSTEM, content=_text_of_blocks(system, "system"))]


def _sampling(body: Mapping[str, Any]) -> SamplingParams:
    from ._openai import _int, _num

    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise _bad("stop_sequences", "'stop_sequences' must be an array of strings")
    max_tokens = _int(body, "max_tokens", lo=1)
    if max_tokens is None:
        raise _bad("max_tokens", "'max_tokens' is required (an integer >= 1)")
    return SamplingParams(
        temperature=_num(body, "temperature", 0.0, 1.0),
        top_p=_num(body, "top_p", 0.0, 1.0),
        top_k=_int(body, "top_k", lo=0),
        max_tokens=max_tokens,
        stop=tuple(stops or ()),
    )


def _extra(body: Mapping[str, Any], target: str | None) -> dict[str, Any]:
    rest = {k: v for k, v in body.items() if k not in _CONSUMED}
    if target == "anthropic":
        return rest
    for key in rest:
        if key not in _TRANSLATED:
            raise unsupported(key, f"the Messages field {key!r}", target)
    return {}


def parse_messages(
    body: Mapping[str, Any],
    request_id: str,
    *,
    target: str | None,
    count_only: bool = False,
    headers: Mapping[bytes, bytes] | None = None,
) -> MessagesRequest:
    """A Messages body → :class:`MessagesRequest` for a deployment of runtime ``target``.

    For an ``anthropic`` target the batch also carries the body itself (a Passthrough):
    the runtime sends it with only ``model`` rewritten, and the translated batch only
    feeds estimates, limits and fallbacks.
    """
    from ._openai import _bool, _str

    model = _str(body, "model", required=True) or ""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty array of {role, content} objects")
    messages = _system(body) + [m for i, turn in enumerate(raw) for m in _turn(turn, i, target)]
    if count_only and body.get("max_tokens") is None:
        sampling = SamplingParams()
    else:
        sampling = _sampling(body)
    tool_choice, serial = _tool_choice(body.get("tool_choice"), target)
    extra = {**_extra(body, target), **_thinking(body, target)}
    if serial:
        extra["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("metadata", "'metadata' must be an object")
    user = (metadata or {}).get("user_id")
    batch = ExecuteBatch(
        request_id=request_id,
        model=model,
        kind=RequestKind.CHAT,
        messages=tuple(messages),
        sampling=sampling,
        stream=bool(_bool(body, "stream")) and not count_only,
        tools=_tools(body.get("tools"), target),
        tool_choice=tool_choice,
        response_format=_structured_output(body),
        user=user if isinstance(user, str) else None,
        extra=extra,
        passthrough=_passthrough(body, headers or {}) if target == _PASSTHROUGH_TARGET else None,
    )
    if not count_only:
        check_features(batch, target, names=_FEATURE_FIELDS)
    return MessagesRequest(batch, count_only=count_only)


# ---------------------------------------------------------------- answer → Messages


def usage_json(usage: TokenUsage) -> dict[str, Any]:
    """Core usage as Anthropic's (whose ``input_tokens`` excludes cache reads)."""
    return {
        "input_tokens": max(0, usage.input_tokens - usage.cached_tokens),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
    }


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        # the model wrote arguments that are not a JSON object: keep them, visibly
        return {"arguments": raw}
    return value


def _message_id(request_id: str) -> str:
    return f"msg_{request_id}"


def render_message(parsed: ParsedRequest, tokens: Tokens) -> bytes:
    choice = tokens.choices[0] if tokens.choices else None
    content: list[dict[str, Any]] = []
    if choice is not None and choice.reasoning:
        # reasoning a runtime reported (no signature: only Anthropic signs its thinking)
        content.append({"type": "thinking", "thinking": choice.reasoning, "signature": ""})
    if choice is not None and choice.text:
        content.append({"type": "text", "text": choice.text})
    for call in choice.tool_calls if choice is not None else ():
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": fn.get("name") or "",
                "input": _arguments(fn.get("arguments")),
            }
        )
    reason = choice.finish_reason if choice is not None else None
    body = {
        "id": _message_id(parsed.batch.request_id),
        "type": "message",
        "role": "assistant",
        "model": parsed.model,
        "content": content,
        "stop_reason": _STOP_REASONS.get(reason or FinishReason.STOP, "end_turn"),
        "stop_sequence": None,
        "usage": usage_json(tokens.usage),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": name, **payload}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


class MessagesStreamEncoder(DialectStreamEncoder):
    """Chunks → Anthropic's event sequence; one content block open at a time.

    ``message_start`` carries the gateway's input estimate (the runners report usage at
    the end); ``message_delta`` carries the real counts, input and cache included.
    """

    def __init__(self, parsed: MessagesRequest) -> None:
        super().__init__()
        self._parsed = parsed
        self._started = False
        self._block = -1
        self._open: str | None = None
        self._tools: dict[int, int] = {}

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message = {
            "id": _message_id(self._parsed.batch.request_id),
            "type": "message",
            "role": "assistant",
            "model": self._parsed.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_json(TokenUsage(input_tokens=self._parsed.estimate, output_tokens=1)),
        }
        return _event("message_start", {"message": message}) + _event("ping", {})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"index": self._block})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._open = kind
        return out + _event("content_block_start", {"index": self._block, "content_block": block})

    def _text_delta(self, text: str) -> bytes:
        out = (
            b"" if self._open == "text" else self._open_block("text", {"type": "text", "text": ""})
        )
        delta = {"type": "text_delta", "text": text}
        return out + _event("content_block_delta", {"index": self._block, "delta": delta})

    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        if self._open != "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
            out = self._open_block("thinking", block)
        delta = {"type": "thinking_delta", "thinking": text}
        return out + _event("content_block_delta", {"index": self._block, "delta": delta})

    def _tool_delta(self, delta: Mapping[str, Any]) -> bytes:
        out = b""
        index = int(delta.get("index", 0))
        fn = delta.get("function") or {}
        if index not in self._tools:
            block = {
                "type": "tool_use",
                "id": delta.get("id") or "",
                "name": fn.get("name") or "",
                "input": {},
            }
            out += self._open_block("tool_use", block)
            self._tools[index] = self._block
        arguments = fn.get("arguments")
        if arguments:
            # a late piece of an earlier call (interleaved calls) goes to that call's block
            piece = {"type": "input_json_delta", "partial_json": arguments}
            out += _event("content_block_delta", {"index": self._tools[index], "delta": piece})
        return out

    def finish(self) -> bytes:
        if self._passed:
            return b""
        usage = self._usage or TokenUsage(input_tokens=self._parsed.estimate)
        delta = {
            "delta": {
                "stop_reason": _STOP_REASONS.get(self._reason or FinishReason.STOP, "end_turn"),
                "stop_sequence": None,
            },
            "usage": usage_json(usage),
        }
        return (
            self._start()
            + self._close()
            + _event("message_delta", delta)
            + _event("message_stop", {})
        )


# ---------------------------------------------------------------- errors


def _overloaded(exc: InferenceError) -> bool:
    """Shed here (503: capacity, breaker, draining) or overloaded upstream (a 529)."""
    return exc.http_status == 503 or (
        isinstance(exc, ServerError) and getattr(exc, "status", None) == 529
    )


def anthropic_status(exc: InferenceError) -> int:
    """Anthropic's status for ``exc``: shed or overloaded is 529 ``overloaded_error``."""
    return 529 if _overloaded(exc) else exc.http_status


def error_json(exc: InferenceError) -> dict[str, Any]:
    status = exc.http_status
    kind = "overloaded_error" if _overloaded(exc) else _ERROR_TYPES.get(status, "api_error")
    if exc.code == "insufficient_quota":
        kind = "billing_error" if status == 402 else "rate_limit_error"
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


class MessagesDoor:
    """``POST /v1/messages`` for the deployments of ``cluster``."""

    feature_fields: Mapping[str, str] | None = _FEATURE_FIELDS

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    async def prefetch(self, body: Mapping[str, Any]) -> None:
        return None  # a Messages request carries its whole conversation

    def authorization(self, headers: Mapping[bytes, bytes]) -> bytes | None:
        key = headers.get(b"x-api-key")
        if key is not None and not headers.get(b"authorization"):
            return b"Bearer " + key.strip()
        return headers.get(b"authorization")

    def parse(
        self, body: Mapping[str, Any], request_id: str, headers: Mapping[bytes, bytes]
    ) -> ParsedRequest:
        model = body.get("model")
        target = target_runtime(self.cluster, model) if isinstance(model, str) else None
        return parse_messages(body, request_id, target=target, headers=headers)

    def local_answer(self, parsed: ParsedRequest) -> bytes | None:
        return None

    def render(self, parsed: ParsedRequest, tokens: Tokens, raw: bytes | None) -> bytes:
        return raw if raw is not None else render_message(parsed, tokens)

    def stream_encoder(self, parsed: ParsedRequest) -> MessagesStreamEncoder:
        assert isinstance(parsed, MessagesRequest)
        return MessagesStreamEncoder(parsed)

    def error_response(self, exc: InferenceError) -> tuple[int, Headers, bytes]:
        body = json.dumps(error_json(exc)).encode()
        return anthropic_status(exc), error_headers(exc), body

    def error_event(self, exc: InferenceError) -> bytes:
        data = json.dumps(error_json(exc), separators=(",", ":"))
        return f"event: error\ndata: {data}\n\n".encode()


def _check_model(cluster: Any, model: str) -> None:
    """Raise NotFoundError unless ``model`` names a deployment (or a model one serves)."""
    route = getattr(cluster, "route", None)
    if route is not None:
        route(model)
        return
    try:
        cluster.config.deployment(model)
    except KeyError:
        raise NotFoundError(f"no deployment named {model!r}", model=model) from None


class CountTokensDoor(MessagesDoor):
    """``POST /v1/messages/count_tokens``: the gateway's estimate, no model is run.

    The estimate is the one admission reserves with (about four characters a token over
    the system prompt, the messages and the tool definitions).
    """

    feature_fields = None

    def parse(
        self, body: Mapping[str, Any], request_id: str, headers: Mapping[bytes, bytes]
    ) -> ParsedRequest:
        model = body.get("model")
        target = target_runtime(self.cluster, model) if isinstance(model, str) else None
        parsed = parse_messages(body, request_id, target=target, count_only=True)
        _check_model(self.cluster, parsed.model)
        tools = json.dumps(body.get("tools") or [], separators=(",", ":"))
        if body.get("tools"):
            parsed.estimate += (len(tools) + 3) // 4
        return parsed

    def local_answer(self, parsed: ParsedRequest) -> bytes | None:
        assert isinstance(parsed, MessagesRequest)
        return json.dumps({"input_tokens": parsed.estimate}).encode()
