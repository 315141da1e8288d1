"""The OpenAI Responses front door: ``POST /v1/responses``.

A Responses body (``input`` as text or items, ``instructions``, function tools,
``function_call`` / ``function_call_output`` items, ``reasoning``, ``text.format``) is
translated onto the internal request path for any deployment. The answer is a
``response`` object, or the Responses event stream (``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` / ``.done``, ``response.function_call_arguments.delta`` /
``.done``, ``response.output_item.done``, ``response.completed``; ``error`` when a
stream fails after it began). Usage always carries ``input_tokens_details.cached_tokens``
and ``output_tokens_details.reasoning_tokens``.

``store`` (default true) keeps the conversation in a bounded in-memory
:class:`ResponseStore`; ``previous_response_id`` continues it while it is stored, and an
unknown or evicted id is a 400 naming ``previous_response_id``.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

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
from atomr_infer_core.errors import BadRequestError, InferenceError, StateUnavailableError

from ._doors import DialectStreamEncoder, Headers, target_runtime, unsupported
from ._errors import error_response
from ._features import check_features
from ._openai import ParsedRequest, _bad, _bool, _int, _num, _str, _type_name

__all__ = ["ResponseStore", "ResponsesDoor", "ResponsesRequest"]

#: fields the translation consumes
_CONSUMED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "max_output_tokens",
        "stream",
        "store",
        "previous_response_id",
        "reasoning",
        "text",
        "parallel_tool_calls",
        "metadata",
        "user",
        "top_logprobs",
    }
)
#: hints with no effect on the answer's content, accepted for every target
_HINTS = frozenset(
    {"include", "truncation", "service_tier", "prompt_cache_key", "safety_identifier"}
)
_FEATURE_FIELDS = {
    "json_schema": "text.format",
    "json_object": "text.format",
    "logprobs": "top_logprobs",
}
#: the runtime whose upstream serves ``/responses`` itself: its deployments get the body as sent
_PASSTHROUGH_TARGET = "openai"
_THINKING_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}


_PART_TYPES: dict[str, type[Any]] = {
    "text": TextPart,
    "image_url": ImageUrlPart,
    "image_base64": ImageBase64Part,
}


def encode_conversation(conversation: Sequence[Message]) -> str:
    """A stored conversation as JSON, for the shared state backend."""

    def part(p: ContentPart) -> dict[str, Any]:
        return {a.name: getattr(p, a.name) for a in attrs.fields(type(p))}

    return json.dumps(
        [
            {
                "role": m.role.value,
                "content": m.content
                if isinstance(m.content, str)
                else [part(p) for p in m.content],
                "name": m.name,
                "tool_calls": None if m.tool_calls is None else [dict(c) for c in m.tool_calls],
                "tool_call_id": m.tool_call_id,
            }
            for m in conversation
        ],
        separators=(",", ":"),
    )


def decode_conversation(text: str) -> tuple[Message, ...]:
    """The conversation :func:`encode_conversation` wrote."""

    def part(raw: dict[str, Any]) -> ContentPart:
        fields = {k: v for k, v in raw.items() if k != "type"}
        part_type: type[ContentPart] = _PART_TYPES[raw["type"]]
        return part_type(**fields)

    return tuple(
        Message(
            role=m["role"],
            content=m["content"]
            if isinstance(m["content"], str)
            else [part(p) for p in m["content"]],
            name=m["name"],
            tool_calls=m["tool_calls"],
            tool_call_id=m["tool_call_id"],
        )
        for m in json.loads(text)
    )


class ResponseStore:
    """Stored conversations by response id: at most ``capacity`` (the least recently used
    is evicted), each for ``ttl`` seconds after it was stored.

    One per gateway process. Each entry is the conversation a response ended: its input
    messages (without ``instructions``, which do not carry over) and its answer. ``clock``
    is trio's by default (tests pass their own). ``publish`` (set by the door when the
    state backend is shared) is told of every stored conversation, so the other gateways
    of the fleet can continue it (``ResponsesDoor.prefetch``).
    """

    def __init__(
        self,
        capacity: int = 1024,
        *,
        ttl: float = 3600.0,
        clock: Callable[[], float] = trio.current_time,
        publish: Callable[[str, tuple[Message, ...], float], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self.publish = publish
        self._items: collections.OrderedDict[str, tuple[float, tuple[Message, ...]]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._items

    def put(self, response_id: str, conversation: Sequence[Message]) -> None:
        """Store a response's conversation (and publish it to the fleet, when shared)."""
        self.keep(response_id, conversation, self.ttl)
        if self.publish is not None:
            self.publish(response_id, tuple(conversation), self.ttl)

    def keep(self, response_id: str, conversation: Sequence[Message], ttl: float) -> None:
        """Store locally for ``ttl`` seconds (at most the store's own), publishing nothing."""
        self._items[response_id] = (self._clock() + min(ttl, self.ttl), tuple(conversation))
        self._items.move_to_end(response_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> tuple[Message, ...]:
        """The stored conversation; BadRequestError when unknown, evicted or expired."""
        entry = self._items.get(response_id)
        if entry is not None and entry[0] <= self._clock():
            del self._items[response_id]
            entry = None
        if entry is None:
            raise BadRequestError(
                f"previous_response_id {response_id!r} is unknown or has expired (this gateway "
                f"keeps the last {self.capacity} stored responses for {self.ttl:g} s); resend "
                "the conversation as input items",
                param="previous_response_id",
            )
        self._items.move_to_end(response_id)
        return entry[1]


class ResponsesRequest(ParsedRequest):
    """A parsed Responses body: the batch plus what rendering and storing need."""

    __slots__ = ("conversation", "echo", "response_id", "store")

    def __init__(
        self,
        batch: ExecuteBatch,
        *,
        conversation: tuple[Message, ...],
        store: bool,
        echo: dict[str, Any],
    ) -> None:
        super().__init__(batch)
        self.conversation = conversation
        self.store = store
        self.echo = echo
        self.response_id = f"resp_{uuid.uuid4().hex}"


# ---------------------------------------------------------------- request → batch


def _content(
    raw: Any, path: str, target: str | None, lenient: bool = False
) -> str | tuple[ContentPart, ...]:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise _bad(path, f"'{path}' must be a string or an array of content parts")
    parts: list[ContentPart] = []
    for j, part in enumerate(raw):
        where = f"{path}[{j}]"
        if not isinstance(part, dict):
            raise _bad(where, f"'{where}' must be an object, got {_type_name(part)}")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text", f"'{where}.text' must be a string")
            parts.append(TextPart(text=part["text"]))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            url = part["image_url"]
            if url.startswith("data:") and ";base64," in url:
                mime, data = url[5:].split(";base64,", 1)
                parts.append(ImageBase64Part(mime=mime or "application/octet-stream", data=data))
            else:
                detail = part.get("detail")
                parts.append(
                    ImageUrlPart(url=url, detail=detail if isinstance(detail, str) else None)
                )
        elif not lenient:
            raise unsupported(f"{where}.type", f"content parts of type {kind!r}", target)
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts)  # type: ignore[union-attr]
    return tuple(parts)


def _call(item: Mapping[str, Any], path: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not all(isinstance(v, str) for v in (call_id, name, arguments)):
        raise _bad(path, f"'{path}' needs string 'call_id', 'name' and 'arguments'")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _output_text(output: Any, path: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        content = _content(output, path, None)
        if isinstance(content, str):
            return content
    raise _bad(path, f"'{path}' must be a string or an array of text parts")


def _items(raw: Any, target: str | None, lenient: bool = False) -> list[Message]:
    """Input items as core messages; ``lenient`` (a passthrough) skips what it cannot carry."""
    if isinstance(raw, str):
        return [Message(role=Role.USER, content=raw)]
    if not isinstance(raw, list):
        raise _bad("input", "'input' must be a string or an array of input items")
    out: list[Message] = []
    for i, item in enumerate(raw):
        path = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(path, f"'{path}' must be an object, got {_type_name(item)}")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(
                    f"{path}.role", f"'{path}.role' must be user, assistant, system or developer"
                )
            out.append(
                Message(
                    role=role,
                    content=_content(item.get("content"), f"{path}.content", target, lenient),
                )
            )
        elif kind == "function_call":
            call = _call(item, path)
            last = out[-1] if out else None
            if last is not None and last.role is Role.ASSISTANT:
                out[-1] = Message(
                    role=Role.ASSISTANT,
                    content=last.content,
                    tool_calls=(*(last.tool_calls or ()), call),
                )
            else:
                out.append(Message(role=Role.ASSISTANT, content="", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise _bad(f"{path}.call_id", f"'{path}.call_id' must be a string")
            text = _output_text(item.get("output"), f"{path}.output")
            out.append(Message(role=Role.TOOL, content=text, tool_call_id=call_id))
        elif kind == "reasoning" or lenient:
            continue  # earlier reasoning is opaque to a translated target; a passthrough keeps all
        else:
            raise unsupported(f"{path}.type", f"input items of type {kind!r}", target)
    return out


def _tools(
    raw: Any, target: str | None, lenient: bool = False
) -> tuple[dict[str, Any], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise _bad("tools", "'tools' must be an array of objects")
    out = []
    for i, tool in enumerate(raw):
        if tool.get("type") != "function" and lenient:
            continue
        if tool.get("type") != "function":
            raise unsupported(f"tools[{i}]", f"the built-in tool {tool.get('type')!r}", target)
        if not isinstance(tool.get("name"), str):
            raise _bad(f"tools[{i}].name", f"'tools[{i}].name' must be a string")
        function = {
            k: tool[k]
            for k in ("name", "description", "parameters", "strict")
            if tool.get(k) is not None
        }
        out.append({"type": "function", "function": function})
    return tuple(out) or None


def _tool_choice(raw: Any) -> Any:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return {"type": "function", "function": {"name": raw["name"]}}
    raise _bad(
        "tool_choice", "'tool_choice' must be auto, none, required or {type: function, name}"
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("text", "'text' must be an object")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict):
        raise _bad("text.format", "'text.format' must be an object")
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise _bad(
            "text.format", "'text.format' must be text, json_object or json_schema with a schema"
        )
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    spec.setdefault("name", "output")
    return {"type": "json_schema", "json_schema": spec}


def _reasoning(raw: Any, target: str | None, max_tokens: int | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad("reasoning", "'reasoning' must be an object")
    effort = raw.get("effort")
    if effort is None:
        return {}  # a summary preference alone changes nothing a translated target returns
    if effort not in _THINKING_BUDGET and effort != "none":
        raise _bad(
            "reasoning.effort",
            f"'reasoning.effort' {effort!r} is not none, minimal, low, medium or high",
        )
    if target in ("openai", "litellm"):
        return {"reasoning_effort": effort}
    if effort == "none":
        return {}
    if target == "anthropic":
        budget = _THINKING_BUDGET[effort]
        if max_tokens is not None and max_tokens <= budget:
            raise _bad(
                "max_output_tokens",
                f"'max_output_tokens' must exceed the thinking budget of effort {effort!r} ({budget})",
            )
        return {"thinking": {"type": "enabled", "budget_tokens": budget}}
    return {"reasoning_effort": effort}  # refused by check_features for the target


def _extra(body: Mapping[str, Any], target: str | None) -> dict[str, Any]:
    for key in body:
        if key not in _CONSUMED and key not in _HINTS:
            raise unsupported(key, f"the Responses field {key!r}", target)
    extra: dict[str, Any] = {}
    parallel = body.get("parallel_tool_calls")
    if parallel is False and target in ("openai", "litellm"):
        extra["parallel_tool_calls"] = False
    return extra


def parse_responses(
    body: Mapping[str, Any], request_id: str, *, target: str | None, store: ResponseStore
) -> ResponsesRequest:
    """A Responses body → :class:`ResponsesRequest` for a deployment of runtime ``target``.

    For an ``openai`` deployment the batch also carries the body itself (a Passthrough to
    the upstream's ``/responses``), unless ``previous_response_id`` names a response of
    this gateway's store (which the upstream cannot know): then it is translated.
    """
    model = _str(body, "model", required=True) or ""
    if body.get("input") is None:
        raise _bad("input", "'input' is required (a string or an array of input items)")
    history: tuple[Message, ...] = ()
    previous = _str(body, "previous_response_id")
    passthrough = target == _PASSTHROUGH_TARGET and (previous is None or previous not in store)
    if previous is not None and not passthrough:
        history = store.get(previous)
    conversation = (*history, *_items(body["input"], target, passthrough))
    instructions = _str(body, "instructions")
    messages = (
        (Message(role=Role.SYSTEM, content=instructions),) if instructions else ()
    ) + conversation
    if not messages:
        raise _bad("input", "'input' must contain at least one item")
    max_tokens = _int(body, "max_output_tokens", lo=1)
    top_logprobs = _int(body, "top_logprobs", lo=0, hi=20)
    extra = {} if passthrough else _extra(body, target)
    extra.update(_reasoning(body.get("reasoning"), target, max_tokens))
    batch = ExecuteBatch(
        request_id=request_id,
        model=model,
        kind=RequestKind.CHAT,
        messages=messages,
        sampling=SamplingParams(
            temperature=_num(body, "temperature", 0.0, 2.0),
            top_p=_num(body, "top_p", 0.0, 1.0),
            max_tokens=max_tokens,
            logprobs=True if top_logprobs else None,
            top_logprobs=top_logprobs or None,
        ),
        stream=bool(_bool(body, "stream")),
        tools=_tools(body.get("tools"), target, passthrough),
        tool_choice=_tool_choice(body.get("tool_choice")),
        response_format=_response_format(body.get("text")),
        user=_str(body, "user"),
        extra=extra,
        passthrough=Passthrough(dialect="openai.responses", body=body) if passthrough else None,
    )
    check_features(batch, target, names=_FEATURE_FIELDS)
    stored = _bool(body, "store")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("metadata", "'metadata' must be an object of string values")
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_tokens,
        "previous_response_id": previous,
        "temperature": batch.sampling.temperature,
        "top_p": batch.sampling.top_p,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "reasoning": {"effort": None, "summary": None, **(body.get("reasoning") or {})},
        "text": body.get("text") or {"format": {"type": "text"}},
        "metadata": body.get("metadata") or {},
        "user": batch.user,
        "truncation": body.get("truncation", "disabled"),
    }
    # a passed-through response is stored upstream, under the upstream's id
    keep = stored is not False and not passthrough
    return ResponsesRequest(batch, conversation=conversation, store=keep, echo=echo)


# ---------------------------------------------------------------- answer → Responses


def usage_json(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def _call_item(item_id: str, call: Mapping[str, Any], status: str) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id") or item_id,
        "name": fn.get("name") or "",
        "arguments": fn.get("arguments") or "",
        "status": status,
    }


def _status(reason: FinishReason | None) -> tuple[str, dict[str, str] | None]:
    if reason is FinishReason.LENGTH:
        return "incomplete", {"reason": "max_output_tokens"}
    if reason is FinishReason.CONTENT_FILTER:
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _response(
    parsed: ResponsesRequest,
    *,
    created: int,
    output: list[dict[str, Any]],
    status: str,
    incomplete: dict[str, str] | None = None,
    usage: TokenUsage | None = None,
) -> dict[str, Any]:
    return {
        "id": parsed.response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "model": parsed.model,
        "output": output,
        "store": parsed.store,
        "usage": usage_json(usage) if usage is not None else None,
        **parsed.echo,
    }


def render_response(parsed: ResponsesRequest, tokens: Tokens, store: ResponseStore) -> bytes:
    choice = tokens.choices[0] if tokens.choices else None
    text = choice.text if choice is not None else ""
    calls = choice.tool_calls if choice is not None else ()
    output: list[dict[str, Any]] = []
    if choice is not None and choice.reasoning:
        output.append(
            _reasoning_item(f"rs_{parsed.batch.request_id}", choice.reasoning, "completed")
        )
    if text or not calls:
        output.append(_message_item(f"msg_{parsed.batch.request_id}", text, "completed"))
    for i, call in enumerate(calls):
        output.append(_call_item(f"fc_{parsed.batch.request_id}_{i}", call, "completed"))
    status, incomplete = _status(choice.finish_reason if choice is not None else None)
    if parsed.store:
        answer = Message(role=Role.ASSISTANT, content=text, tool_calls=tuple(calls) or None)
        store.put(parsed.response_id, (*parsed.conversation, answer))
    body = _response(
        parsed,
        created=int(time.time()),
        output=output,
        status=status,
        incomplete=incomplete,
        usage=tokens.usage,
    )
    return json.dumps(body, separators=(",", ":")).encode()


class ResponsesStreamEncoder(DialectStreamEncoder):
    """Chunks → the Responses event stream, one output item open at a time."""

    def __init__(self, parsed: ResponsesRequest, store: ResponseStore) -> None:
        super().__init__()
        self._parsed = parsed
        self._store = store
        self._created = int(time.time())
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        #: tool-call index → its output_index
        self._positions: dict[int, int] = {}
        self._text: list[str] = []
        self._reasoning: list[str] = []

    def _event(self, name: str, payload: dict[str, Any]) -> bytes:
        data = json.dumps(
            {"type": name, "sequence_number": self._sequence, **payload}, separators=(",", ":")
        )
        self._sequence += 1
        return f"event: {name}\ndata: {data}\n\n".encode()

    def _snapshot(self, status: str, **kw: Any) -> dict[str, Any]:
        return _response(
            self._parsed, created=self._created, output=list(self._output), status=status, **kw
        )

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        snapshot = self._snapshot("in_progress")
        return self._event("response.created", {"response": snapshot}) + self._event(
            "response.in_progress", {"response": snapshot}
        )

    def _close(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        self._open = None
        index = len(self._output)
        out = b""
        if item["type"] == "reasoning":
            text = "".join(self._reasoning)
            self._reasoning = []
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out += self._event("response.reasoning_text.done", {**where, "text": text})
            item = _reasoning_item(item["id"], text, "completed")
        elif item["type"] == "message":
            text = "".join(self._text)
            self._text = []
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out += self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
            out += self._event("response.content_part.done", {**where, "part": part})
            item = _message_item(item["id"], text, "completed")
        else:
            item["status"] = "completed"  # in place: the final snapshot sees late pieces
            where = {"item_id": item["id"], "output_index": index}
            out += self._event(
                "response.function_call_arguments.done",
                {**where, "arguments": item["arguments"], "name": item["name"]},
            )
        self._output.append(item)
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def _open_item(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self._open = item
        index = len(self._output)
        out += self._event("response.output_item.added", {"output_index": index, "item": item})
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event(
                "response.content_part.added",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            )
        return out

    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != "reasoning":
            item_id = f"rs_{self._parsed.batch.request_id}_{len(self._output)}"
            out += self._open_item(_reasoning_item(item_id, "", "in_progress"))
        self._reasoning.append(text)
        where = {"item_id": self._open["id"], "output_index": len(self._output), "content_index": 0}  # type: ignore[index]
        return out + self._event("response.reasoning_text.delta", {**where, "delta": text})

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != "message":
            item_id = f"msg_{self._parsed.batch.request_id}_{len(self._output)}"
            out += self._open_item({**_message_item(item_id, "", "in_progress"), "content": []})
        self._text.append(text)
        where = {"item_id": self._open["id"], "output_index": len(self._output), "content_index": 0}  # type: ignore[index]
        return out + self._event(
            "response.output_text.delta", {**where, "delta": text, "logprobs": []}
        )

    def _tool_delta(self, delta: Mapping[str, Any]) -> bytes:
        out = b""
        index = int(delta.get("index", 0))
        fn = delta.get("function") or {}
        if index not in self._calls:
            item_id = f"fc_{self._parsed.batch.request_id}_{index}"
            item = _call_item(
                item_id,
                {"id": delta.get("id"), "function": {"name": fn.get("name")}},
                "in_progress",
            )
            out += self._open_item(item)
            self._calls[index] = item
            self._positions[index] = len(self._output)
        item = self._calls[index]
        piece = fn.get("arguments")
        if piece:
            # a late piece of an earlier call (interleaved calls) still reaches its item
            item["arguments"] += piece
            where = {"item_id": item["id"], "output_index": self._positions[index]}
            out += self._event("response.function_call_arguments.delta", {**where, "delta": piece})
        return out

    def finish(self) -> bytes:
        if self._passed:
            return b""
        out = self._start()
        out += self._close()
        status, incomplete = _status(self._reason)
        usage = self._usage or TokenUsage()
        snapshot = self._snapshot(status, incomplete=incomplete, usage=usage)
        if self._parsed.store:
            text = "".join(
                c["text"]
                for item in self._output
                if item["type"] == "message"
                for c in item["content"]
            )
            calls = [
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
                for item in self._output
                if item["type"] == "function_call"
            ]
            answer = Message(role=Role.ASSISTANT, content=text, tool_calls=tuple(calls) or None)
            self._store.put(self._parsed.response_id, (*self._parsed.conversation, answer))
        name = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(name, {"response": snapshot})


class ResponsesDoor:
    """``POST /v1/responses`` for the deployments of ``cluster``, with its response store."""

    feature_fields: Mapping[str, str] | None = _FEATURE_FIELDS

    def __init__(self, cluster: Any, store: ResponseStore | None = None) -> None:
        self.cluster = cluster
        self.store = store if store is not None else ResponseStore()
        #: the fleet's shared state (a redis backend), or ``None``: stored responses are
        #: then this process's only
        state = getattr(cluster, "state", None)
        self._shared = state if callable(getattr(state, "get_value", None)) else None
        if self._shared is not None and self.store.publish is None:
            self.store.publish = self._publish

    def _publish(self, response_id: str, conversation: tuple[Message, ...], ttl: float) -> None:
        assert self._shared is not None
        self._shared.put_value(f"response:{response_id}", encode_conversation(conversation), ttl)

    async def prefetch(self, body: Mapping[str, Any]) -> None:
        """Bring ``previous_response_id``'s conversation from the fleet's shared state into
        this gateway's store when another gateway stored it (no-op without shared state)."""
        previous = body.get("previous_response_id") if isinstance(body, Mapping) else None
        if self._shared is None or not isinstance(previous, str) or previous in self.store:
            return
        try:
            found = await self._shared.get_value(f"response:{previous}")
        except StateUnavailableError:
            if self._shared.fail_open:
                return  # served from this gateway's own store: an unknown id is a clear 400
            raise
        if found is not None:
            text, ttl = found
            self.store.keep(previous, decode_conversation(text), ttl)

    def authorization(self, headers: Mapping[bytes, bytes]) -> bytes | None:
        return headers.get(b"authorization")

    def parse(
        self, body: Mapping[str, Any], request_id: str, headers: Mapping[bytes, bytes]
    ) -> ParsedRequest:
        model = body.get("model")
        target = target_runtime(self.cluster, model) if isinstance(model, str) else None
        return parse_responses(body, request_id, target=target, store=self.store)

    def local_answer(self, parsed: ParsedRequest) -> bytes | None:
        return None

    def render(self, parsed: ParsedRequest, tokens: Tokens, raw: bytes | None) -> bytes:
        assert isinstance(parsed, ResponsesRequest)
        if raw is not None:
            return raw  # the upstream's own response object
        return render_response(parsed, tokens, self.store)

    def stream_encoder(self, parsed: ParsedRequest) -> ResponsesStreamEncoder:
        assert isinstance(parsed, ResponsesRequest)
        return ResponsesStreamEncoder(parsed, self.store)

    def error_response(self, exc: InferenceError) -> tuple[int, Headers, bytes]:
        return error_response(exc)

    def error_event(self, exc: InferenceError) -> bytes:
        body = json.loads(error_response(exc)[2])["error"]
        payload = {
            "type": "error",
            "code": body["code"] or body["type"],
            "message": body["message"],
            "param": body["param"],
        }
        return (
            b"event: error\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
        )
