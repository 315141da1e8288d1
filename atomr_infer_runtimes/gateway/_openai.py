"""OpenAI wire format: strict request parsing into ExecuteBatch, and response framing.

Parsing raises :class:`~atomr_infer_core.errors.BadRequestError` with ``param`` naming
the offending field (``messages[2].role``); it never lets a user mistake become a 500.
Renderers turn :class:`~atomr_infer_core.Tokens` and chunks into OpenAI's JSON and SSE.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from atomr_infer_core import (
    ContentPart,
    ExecuteBatch,
    FinishReason,
    ImageBase64Part,
    ImageUrlPart,
    Message,
    RequestKind,
    Role,
    SamplingParams,
    TextPart,
    TokenChunk,
    Tokens,
    TokenUsage,
    estimate_tokens,
)
from atomr_infer_core.errors import BadRequestError

from ._json import loads_strict

__all__ = [
    "ChatStreamEncoder",
    "CompletionStreamEncoder",
    "ParsedRequest",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "parse_json_body",
    "render_chat",
    "render_completion",
    "render_embeddings",
    "usage_json",
]

_ROLES = {r.value for r in Role}
_SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
)
_CHAT_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "tools",
        "tool_choice",
        "response_format",
        *_SAMPLING_KEYS,
    }
)
_COMPLETION_KEYS = frozenset(
    {"model", "prompt", "stream", "stream_options", "user", "echo", *_SAMPLING_KEYS}
)
_EMBEDDING_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


class ParsedRequest:
    """A parsed body: the batch plus what only the gateway needs (stream options)."""

    __slots__ = ("batch", "encoding_format", "include_usage", "model", "prompts")

    def __init__(
        self,
        batch: ExecuteBatch,
        *,
        include_usage: bool = False,
        encoding_format: str = "float",
        prompts: tuple[ExecuteBatch, ...] = (),
    ) -> None:
        self.batch = batch
        self.model = batch.model
        self.include_usage = include_usage
        self.encoding_format = encoding_format
        #: a completion's prompts when it sent more than one (each its own batch), else ()
        self.prompts = prompts


# ---------------------------------------------------------------- type checks


def _bad(param: str, message: str) -> BadRequestError:
    return BadRequestError(message, param=param)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _str(
    body: Mapping[str, Any], key: str, *, path: str | None = None, required: bool = False
) -> str | None:
    value = body.get(key)
    param = path or key
    if value is None:
        if required:
            raise _bad(param, f"'{param}' is required (a string)")
        return None
    if not isinstance(value, str):
        raise _bad(param, f"'{param}' must be a string, got {_type_name(value)}")
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _bad(key, f"'{key}' must be a boolean, got {_type_name(value)}")
    return value


def _int(
    body: Mapping[str, Any], key: str, *, lo: int | None = None, hi: int | None = None
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _bad(key, f"'{key}' must be an integer, got {_type_name(value)}")
    if lo is not None and value < lo:
        raise _bad(key, f"'{key}' must be >= {lo} (got {value})")
    if hi is not None and value > hi:
        raise _bad(key, f"'{key}' must be <= {hi} (got {value})")
    return value


def _num(body: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, f"'{key}' must be a number, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise _bad(key, f"'{key}' must be between {lo:g} and {hi:g} (got {value})")
    return float(value)


def _obj(body: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(key, f"'{key}' must be an object, got {_type_name(value)}")
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > 4:
            raise _bad("stop", f"'stop' takes at most 4 sequences (got {len(value)})")
        return tuple(value)
    raise _bad("stop", "'stop' must be a string or an array of strings")


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object a provider can be sent.

    NaN, infinities, lone surrogates and nesting past ``MAX_JSON_DEPTH`` are refused
    here (see ``_json.py``), so no request can fail later while it is encoded upstream.
    """
    body = loads_strict(raw)
    if not isinstance(body, dict):
        raise BadRequestError(f"the request body must be a JSON object, got {_type_name(body)}")
    return body


def _sampling(body: Mapping[str, Any]) -> SamplingParams:
    max_tokens = _int(body, "max_completion_tokens", lo=1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", lo=1)
    else:
        _int(body, "max_tokens", lo=1)
    return SamplingParams(
        temperature=_num(body, "temperature", 0.0, 2.0),
        top_p=_num(body, "top_p", 0.0, 1.0),
        max_tokens=max_tokens,
        stop=_stop(body),
        presence_penalty=_num(body, "presence_penalty", -2.0, 2.0),
        frequency_penalty=_num(body, "frequency_penalty", -2.0, 2.0),
        seed=_int(body, "seed"),
        n=_int(body, "n", lo=1, hi=128) or 1,
        logprobs=_bool(body, "logprobs"),
        top_logprobs=_int(body, "top_logprobs", lo=0, hi=20),
    )


def _stream_options(body: Mapping[str, Any], stream: bool) -> bool:
    options = _obj(body, "stream_options")
    if options is None:
        return False
    if not stream:
        raise _bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise _bad(
            "stream_options.include_usage", "'stream_options.include_usage' must be a boolean"
        )
    return include


def _extra(body: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in known}


# ---------------------------------------------------------------- chat


def _part(raw: object, path: str) -> ContentPart:
    if not isinstance(raw, dict):
        raise _bad(path, f"'{path}' must be an object, got {_type_name(raw)}")
    kind = raw.get("type")
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise _bad(f"{path}.text", f"'{path}.text' must be a string")
        return TextPart(text=text)
    if kind == "image_url":
        image = raw.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise _bad(f"{path}.image_url.url", f"'{path}.image_url.url' must be a string")
        detail = image.get("detail") if isinstance(image, dict) else None
        if url.startswith("data:") and ";base64," in url:
            mime, data = url[5:].split(";base64,", 1)
            return ImageBase64Part(mime=mime or "application/octet-stream", data=data)
        return ImageUrlPart(url=url, detail=detail if isinstance(detail, str) else None)
    raise _bad(f"{path}.type", f"'{path}.type' must be 'text' or 'image_url' (got {kind!r})")


def _message(raw: object, i: int) -> Message:
    path = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise _bad(path, f"'{path}' must be an object, got {_type_name(raw)}")
    role = raw.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _bad(
            f"{path}.role",
            f"'{path}.role' must be one of {', '.join(sorted(_ROLES))} (got {role!r})",
        )
    content = raw.get("content")
    value: str | tuple[ContentPart, ...]
    if content is None:
        if role not in ("assistant",):
            raise _bad(f"{path}.content", f"'{path}.content' is required for role {role!r}")
        value = ""
    elif isinstance(content, str):
        value = content
    elif isinstance(content, list):
        value = tuple(_part(p, f"{path}.content[{j}]") for j, p in enumerate(content))
    else:
        raise _bad(f"{path}.content", f"'{path}.content' must be a string or an array of parts")
    tool_calls = raw.get("tool_calls")
    if tool_calls is not None and not (
        isinstance(tool_calls, list) and all(isinstance(c, dict) for c in tool_calls)
    ):
        raise _bad(f"{path}.tool_calls", f"'{path}.tool_calls' must be an array of objects")
    return Message(
        role=role,
        content=value,
        name=_str(raw, "name", path=f"{path}.name"),
        tool_calls=tool_calls,
        tool_call_id=_str(raw, "tool_call_id", path=f"{path}.tool_call_id"),
    )


def _tools(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise _bad("tools", "'tools' must be an array of objects")
    return tuple(tools)


def parse_chat(body: Mapping[str, Any], request_id: str) -> ParsedRequest:
    """A ``/v1/chat/completions`` body → :class:`ParsedRequest` (kind chat)."""
    model = _str(body, "model", required=True)
    messages = body.get("messages")
    if messages is None:
        raise _bad("messages", "'messages' is required (an array of {role, content} objects)")
    if not isinstance(messages, list):
        raise _bad("messages", f"'messages' must be an array, got {_type_name(messages)}")
    if not messages:
        raise _bad("messages", "'messages' must contain at least one message")
    parsed = tuple(_message(m, i) for i, m in enumerate(messages))
    stream = bool(_bool(body, "stream"))
    include_usage = _stream_options(body, stream)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, str | dict):
        raise _bad("tool_choice", "'tool_choice' must be a string or an object")
    batch = ExecuteBatch(
        request_id=request_id,
        model=model or "",
        kind=RequestKind.CHAT,
        messages=parsed,
        sampling=_sampling(body),
        stream=stream,
        tools=_tools(body),
        tool_choice=tool_choice,
        response_format=_obj(body, "response_format"),
        user=_str(body, "user"),
        extra=_extra(body, _CHAT_KEYS),
    )
    return ParsedRequest(batch, include_usage=include_usage)


def parse_completion(body: Mapping[str, Any], request_id: str) -> ParsedRequest:
    """A ``/v1/completions`` body → :class:`ParsedRequest` (kind completion)."""
    model = _str(body, "model", required=True)
    prompts = _prompts(body.get("prompt"))
    if body.get("echo"):
        raise _bad("echo", "'echo' is not supported by this gateway")
    stream = bool(_bool(body, "stream"))
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        # the legacy endpoint's logprobs is how many alternatives to list (0 to 5)
        top = _int(body, "logprobs", lo=0, hi=5)
        body = {**body, "logprobs": True, "top_logprobs": top}
    batches = tuple(
        ExecuteBatch(
            request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
            model=model or "",
            kind=RequestKind.COMPLETION,
            prompt=prompt,
            sampling=_sampling(body),
            stream=stream,
            user=_str(body, "user"),
            extra=_extra(body, _COMPLETION_KEYS),
        )
        for i, prompt in enumerate(prompts)
    )
    batch = batches[0] if len(batches) == 1 else attrs.evolve(batches[0], request_id=request_id)
    return ParsedRequest(
        batch,
        include_usage=_stream_options(body, stream),
        prompts=batches if len(batches) > 1 else (),
    )


#: the most prompts one /v1/completions request may carry (OpenAI's limit is 2048 too)
MAX_PROMPTS = 2048


def _prompts(prompt: Any) -> tuple[str, ...]:
    """``prompt``: a string or an array of strings, as OpenAI accepts it."""
    if prompt is None:
        raise _bad("prompt", "'prompt' is required (a string or an array of strings)")
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) > MAX_PROMPTS:
            raise _bad("prompt", f"'prompt' holds {len(prompt)} prompts; at most {MAX_PROMPTS}")
        return tuple(prompt)
    if isinstance(prompt, list) and not prompt:
        raise _bad("prompt", "'prompt' must not be empty")
    raise _bad(
        "prompt",
        "'prompt' must be a string or an array of strings; token arrays are not supported",
    )


def parse_embedding(body: Mapping[str, Any], request_id: str) -> ParsedRequest:
    """A ``/v1/embeddings`` body → :class:`ParsedRequest` (kind embedding)."""
    model = _str(body, "model", required=True)
    raw = body.get("input")
    if raw is None:
        raise _bad("input", "'input' is required (a string or an array of strings)")
    if isinstance(raw, str):
        inputs: tuple[str, ...] = (raw,)
    elif isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw):
        inputs = tuple(raw)
    elif isinstance(raw, list) and not raw:
        raise _bad("input", "'input' must not be empty")
    else:
        raise _bad(
            "input",
            "'input' must be a string or an array of strings; token arrays are not supported",
        )
    encoding = _str(body, "encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _bad(
            "encoding_format", f"'encoding_format' must be 'float' or 'base64' (got {encoding!r})"
        )
    batch = ExecuteBatch(
        request_id=request_id,
        model=model or "",
        kind=RequestKind.EMBEDDING,
        inputs=inputs,
        dimensions=_int(body, "dimensions", lo=1),
        user=_str(body, "user"),
        extra=_extra(body, _EMBEDDING_KEYS),
    )
    return ParsedRequest(batch, encoding_format=encoding)


# ---------------------------------------------------------------- responses


def usage_json(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _finish(reason: FinishReason | None) -> str:
    return str(reason) if reason is not None else "stop"


def _choices_for(tokens: Tokens, n: int) -> Sequence[Any]:
    by_index = {c.index: c for c in tokens.choices}
    from atomr_infer_core import Choice

    return [by_index.get(i, Choice(index=i)) for i in range(max(n, len(by_index)))]


def _chat_logprobs(entries: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {"content": [dict(e) for e in entries], "refusal": None}


def completion_logprobs(
    entries: Sequence[Mapping[str, Any]] | None, offset: int = 0
) -> dict[str, Any] | None:
    """Chat-shaped logprob entries in the legacy completions shape (``tokens``,
    ``token_logprobs``, ``top_logprobs`` as token → logprob maps, ``text_offset``)."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            {t["token"]: t["logprob"] for t in e.get("top_logprobs") or ()} for e in entries
        ],
        "text_offset": offsets,
    }


def render_chat(tokens: Tokens, *, response_id: str, created: int, model: str, n: int) -> bytes:
    choices = []
    for choice in _choices_for(tokens, n):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
        if choice.reasoning:
            message["reasoning_content"] = choice.reasoning  # as DeepSeek, vLLM, LiteLLM send it
        if choice.tool_calls:
            message["tool_calls"] = [dict(c) for c in choice.tool_calls]
            if not choice.text:
                message["content"] = None
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": _chat_logprobs(choice.logprobs),
                "finish_reason": _finish(choice.finish_reason),
            }
        )
    body = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_json(tokens.usage),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def render_completion(
    tokens: Tokens, *, response_id: str, created: int, model: str, n: int
) -> bytes:
    choices = [
        {
            "text": c.text,
            "index": c.index,
            "logprobs": completion_logprobs(c.logprobs),
            "finish_reason": _finish(c.finish_reason),
        }
        for c in _choices_for(tokens, n)
    ]
    body = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_json(tokens.usage),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _base64_floats(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def render_embeddings(
    tokens: Tokens, *, model: str, inputs: Sequence[str], encoding_format: str
) -> bytes:
    vectors = tokens.embeddings or ()
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _base64_floats(v) if encoding_format == "base64" else list(v),
        }
        for i, v in enumerate(vectors)
    ]
    prompt_tokens = tokens.usage.input_tokens or sum(estimate_tokens(s) for s in inputs)
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return json.dumps(body, separators=(",", ":")).encode()


class _StreamEncoder:
    """Frames chunks as SSE ``data:`` events sharing one id/created/model prefix."""

    object_name = ""

    def __init__(self, *, response_id: str, created: int, model: str, include_usage: bool) -> None:
        rid, name = json.dumps(response_id), json.dumps(model)
        self._prefix = (
            f'{{"id":{rid},"object":"{self.object_name}","created":{created},'
            f'"model":{name},"system_fingerprint":null,"choices":'
        ).encode()
        self._suffix = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._include_usage = include_usage
        self.usage: TokenUsage | None = None

    def _event(self, choices: list[dict[str, Any]]) -> bytes:
        return (
            b"data: "
            + self._prefix
            + json.dumps(choices, separators=(",", ":")).encode()
            + self._suffix
        )

    def finish(self) -> bytes:
        """The usage chunk (when asked for) and ``[DONE]``."""
        out = b""
        if self._include_usage:
            usage = json.dumps(usage_json(self.usage or TokenUsage()), separators=(",", ":"))
            out += b"data: " + self._prefix + b'[],"usage":' + usage.encode() + b"}\n\n"
        return out + b"data: [DONE]\n\n"


class ChatStreamEncoder(_StreamEncoder):
    """``chat.completion.chunk`` events: role first, then content/tool-call deltas."""

    object_name = "chat.completion.chunk"

    def __init__(self, *, response_id: str, created: int, model: str, include_usage: bool) -> None:
        super().__init__(
            response_id=response_id, created=created, model=model, include_usage=include_usage
        )
        self._started: set[int] = set()

    def encode(self, chunk: TokenChunk) -> bytes:
        if chunk.usage is not None:
            self.usage = chunk.usage
        out = b""
        if chunk.index not in self._started:
            self._started.add(chunk.index)
            role = {
                "index": chunk.index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            out += self._event([role])
        if not (
            chunk.text_delta
            or chunk.reasoning_delta
            or chunk.tool_call_deltas
            or chunk.finish_reason
            or chunk.logprobs
        ):
            return out
        delta: dict[str, Any] = {}
        if chunk.reasoning_delta:
            delta["reasoning_content"] = chunk.reasoning_delta
        if chunk.text_delta:
            delta["content"] = chunk.text_delta
        if chunk.tool_call_deltas:
            delta["tool_calls"] = [dict(d) for d in chunk.tool_call_deltas]
        finish = str(chunk.finish_reason) if chunk.finish_reason is not None else None
        logprobs = chunk.logprobs if isinstance(chunk.logprobs, Mapping) else None
        choice = {
            "index": chunk.index,
            "delta": delta,
            "logprobs": _chat_logprobs(logprobs.get("content") if logprobs else None),
            "finish_reason": finish,
        }
        return out + self._event([choice])


class CompletionStreamEncoder(_StreamEncoder):
    """``text_completion`` events carrying ``choices[].text`` pieces."""

    object_name = "text_completion"

    def __init__(self, *, response_id: str, created: int, model: str, include_usage: bool) -> None:
        super().__init__(
            response_id=response_id, created=created, model=model, include_usage=include_usage
        )
        self._offsets: dict[int, int] = {}

    def encode(self, chunk: TokenChunk) -> bytes:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if not (chunk.text_delta or chunk.finish_reason or chunk.logprobs):
            return b""
        finish = str(chunk.finish_reason) if chunk.finish_reason is not None else None
        logprobs = None
        if isinstance(chunk.logprobs, Mapping) and "tokens" in chunk.logprobs:
            logprobs = dict(chunk.logprobs)  # already the legacy shape (an upstream's own)
        elif isinstance(chunk.logprobs, Mapping):
            offset = self._offsets.get(chunk.index, 0)
            logprobs = completion_logprobs(chunk.logprobs.get("content") or (), offset)
            self._offsets[chunk.index] = offset + sum(len(t) for t in logprobs["tokens"])
        choice = {
            "text": chunk.text_delta,
            "index": chunk.index,
            "logprobs": logprobs,
            "finish_reason": finish,
        }
        return self._event([choice])
