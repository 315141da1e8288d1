"""A mock OpenAI API on loopback: chat, completions, embeddings, models (and Azure paths).

Content is derived from the request so tests can assert exact text:

- chat: choice ``i`` answers ``"Echo: <text of the last user message>"`` (``"Echo #i: …"``
  for ``i > 0``), streamed one word per chunk (``"Echo:"``, ``" hello"``, …);
  ``max_tokens`` cuts it to that many words with ``finish_reason="length"``. A
  ``response_format`` json_schema is honoured: the answer is JSON built from the schema
  (``schema_answer``; ``json_object`` gives ``{"echo": <text>}``). With tools
  (and ``tool_choice`` not ``"none"``) the model calls the first (or the named) tool with
  arguments ``{"input": <last user text>}``. ``logprobs: true`` adds ``logprobs.content``:
  one entry per word, each ``token_logprob`` (settable, -0.05 by default).
- completions: ``"Echo: <prompt>"``, the same way.
- responses (``POST /v1/responses``): the same answers in the Responses API's shapes and
  events (see :mod:`._mock_responses`).
- embeddings: ``dimensions`` (default 8) numbers in [-1, 1] from the SHA-256 of each input.
- usage: prompt tokens = words in the input (image parts count 1); completion tokens =
  words sent (tool calls count 1) plus ``reasoning_tokens``; with ``reasoning_effort`` the
  answer also carries ``reasoning_content`` ``"Thinking: <text>"`` (streamed as one delta
  before the content), as DeepSeek-style servers send it; ``cached_tokens`` and
  ``reasoning_tokens`` are attributes tests may set.

A prompt whose words plus ``max_tokens`` exceed ``context_window`` gets OpenAI's 400
``context_length_exceeded``; a last user message containing ``blocked_word`` gets a 400
``content_filter``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ._mock_responses import responses_reply
from ._mock_server import (
    JSONReply,
    MockProviderServer,
    RecordedRequest,
    Reply,
    StreamReply,
    open_mock_server,
    sse_frame,
)
from ._schema import schema_answer

__all__ = ["MockOpenAIServer", "mock_openai"]

_WORDS = re.compile(r"\s*\S+")
_CREATED = 1_700_000_000


def _words(text: str) -> list[str]:
    return _WORDS.findall(text)


def _count_words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> tuple[str, int]:
    """The text of a message's content and the number of image parts in it."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts = [p.get("text", "") for p in content if p.get("type") == "text"]
    images = sum(1 for p in content if p.get("type") == "image_url")
    return " ".join(texts), images


class MockOpenAIServer(MockProviderServer):
    """OpenAI's wire format; see the module docstring for the content rules."""

    provider = "openai"

    def __init__(
        self,
        *,
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small"),
        context_window: int = 128_000,
        blocked_word: str = "FORBIDDEN",
    ) -> None:
        super().__init__()
        self.models = tuple(models)
        self.context_window = context_window
        self.blocked_word = blocked_word
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        #: the logprob of every token of a chat answer, reported when the request sends
        #: ``logprobs: true`` (``top_logprobs`` alternatives get this minus one each)
        self.token_logprob = -0.05
        self.add_route("POST", "/v1/chat/completions", self.chat_completions)
        self.add_route("POST", "/v1/completions", self.completions)
        self.add_route("POST", "/v1/embeddings", self.embeddings)
        self.add_route("POST", "/v1/responses", self.responses)
        #: responses this server made (``previous_response_id`` must name one), each with
        #: its conversation's last user text
        self.response_ids: dict[str, str] = {}
        self.add_route("GET", "/v1/models", self.list_models, faulty=False)
        self.add_route("POST", "/openai/deployments/*", self.azure)

    # -- routes -------------------------------------------------------------------------
    async def list_models(self, request: RecordedRequest) -> Reply:
        data = [
            {"id": m, "object": "model", "created": _CREATED, "owned_by": "mock"}
            for m in self.models
        ]
        return JSONReply(body={"object": "list", "data": data})

    async def azure(self, request: RecordedRequest) -> Reply:
        # /openai/deployments/{deployment}/{operation}?api-version=...
        parts = request.path.split("/")
        deployment, operation = parts[3], "/".join(parts[4:])
        body = request.json or {}
        body.setdefault("model", deployment)
        handler = {
            "chat/completions": self._chat,
            "completions": self._completion,
            "embeddings": self._embed,
        }.get(operation)
        if handler is None or "api-version=" not in request.query:
            return self._error(404, "Resource not found", "invalid_request_error", "404")
        return handler(body)

    async def responses(self, request: RecordedRequest) -> Reply:
        return responses_reply(self, request.json or {})

    async def chat_completions(self, request: RecordedRequest) -> Reply:
        return self._chat(request.json or {})

    async def completions(self, request: RecordedRequest) -> Reply:
        return self._completion(request.json or {})

    async def embeddings(self, request: RecordedRequest) -> Reply:
        return self._embed(request.json or {})

    # -- chat ---------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any]) -> Reply:
        messages = body.get("messages") or []
        prompt_tokens = 0
        last_user = ""
        for message in messages:
            text, images = _content_text(message.get("content"))
            prompt_tokens += _count_words(text) + images
            if message.get("role") == "user":
                last_user = text
        refused = self._refuse(prompt_tokens, body, last_user)
        if refused is not None:
            return refused
        n = int(body.get("n") or 1)
        tool = self._tool_to_call(body)
        choices = [self._choice_words(i, last_user, body, tool) for i in range(n)]
        completion = sum(len(words) for words, _ in choices) + self.reasoning_tokens
        usage = self._usage(prompt_tokens, completion)
        model = body.get("model", "")
        # with reasoning_effort the mock "reasons" aloud, as DeepSeek-style servers do
        thought = f"Thinking: {last_user}" if body.get("reasoning_effort") else None
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._chat_stream(
                model, choices, tool, last_user, usage, include_usage, thought, body
            )
        out = []
        for i, (words, finish) in enumerate(choices):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(words) or None}
            if thought:
                message["reasoning_content"] = thought
            if tool is not None:
                message["content"] = None
                message["tool_calls"] = [_tool_call(i, tool, last_user)]
            logprobs = self._logprobs(words, body) if tool is None else None
            out.append(
                {"index": i, "message": message, "finish_reason": finish, "logprobs": logprobs}
            )
        return JSONReply(
            body={
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": _CREATED,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": out,
                "usage": usage,
            }
        )

    def _chat_stream(
        self,
        model: str,
        choices: list[tuple[list[str], str]],
        tool: str | None,
        last_user: str,
        usage: dict[str, Any],
        include_usage: bool,
        thought: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> Reply:
        def chunk(choice_list: list[dict[str, Any]], **extra: Any) -> bytes:
            body: dict[str, Any] = {
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": _CREATED,
                "model": model,
                "choices": choice_list,
            }
            if include_usage:
                body["usage"] = None
            body.update(extra)
            return sse_frame(body)

        def delta(
            i: int, d: dict[str, Any], finish: str | None = None, logprobs: Any = None
        ) -> dict[str, Any]:
            return {"index": i, "delta": d, "finish_reason": finish, "logprobs": logprobs}

        frames = [
            chunk([delta(i, {"role": "assistant", "content": ""})]) for i in range(len(choices))
        ]
        for i, (words, finish) in enumerate(choices):
            if thought:
                frames.append(chunk([delta(i, {"reasoning_content": thought})]))
            if tool is not None:
                call = _tool_call(i, tool, last_user)
                args = call["function"]["arguments"]
                half = len(args) // 2
                first = {**call, "index": 0, "function": {"name": tool, "arguments": ""}}
                frames.append(chunk([delta(i, {"tool_calls": [first]})]))
                for piece in (args[:half], args[half:]):
                    piece_delta = {"index": 0, "function": {"arguments": piece}}
                    frames.append(chunk([delta(i, {"tool_calls": [piece_delta]})]))
            for word in words:
                logprobs = self._logprobs([word], request or {})
                frames.append(chunk([delta(i, {"content": word}, logprobs=logprobs)]))
            frames.append(chunk([delta(i, {}, finish)]))
        if include_usage:
            frames.append(chunk([], usage=usage))
        frames.append(b"data: [DONE]\n\n")
        return StreamReply(frames=frames)

    def _logprobs(self, words: list[str], body: dict[str, Any]) -> dict[str, Any] | None:
        """OpenAI's ``choices[].logprobs`` for ``words`` (one token each), when asked."""
        if not body.get("logprobs"):
            return None
        top = int(body.get("top_logprobs") or 0)

        def entry(token: str, logprob: float) -> dict[str, Any]:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        return {
            "content": [
                {
                    **entry(word, self.token_logprob),
                    "top_logprobs": [entry(word, self.token_logprob)]
                    + [entry(f"alt{k}", self.token_logprob - k) for k in range(1, top)],
                }
                for word in words
            ],
            "refusal": None,
        }

    def _choice_words(
        self, index: int, last_user: str, body: dict[str, Any], tool: str | None
    ) -> tuple[list[str], str]:
        if tool is not None:
            return [], "tool_calls"
        prefix = "Echo:" if index == 0 else f"Echo #{index}:"
        words = _words(f"{prefix} {last_user}".rstrip())
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            words = _words(schema_answer((fmt.get("json_schema") or {}).get("schema"), last_user))
        elif fmt.get("type") == "json_object":
            words = _words(schema_answer({"properties": {"echo": {}}}, last_user))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit is not None and len(words) > int(limit):
            return words[: int(limit)], "length"
        return words, "stop"

    def _tool_to_call(self, body: dict[str, Any]) -> str | None:
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if not tools or choice == "none":
            return None
        if isinstance(choice, dict):
            return str(choice["function"]["name"])
        return str(tools[0]["function"]["name"])

    # -- completions and embeddings -----------------------------------------------------
    def _completion(self, body: dict[str, Any]) -> Reply:
        prompt = body.get("prompt") or ""
        prompt = prompt if isinstance(prompt, str) else " ".join(prompt)
        prompt_tokens = _count_words(prompt)
        refused = self._refuse(prompt_tokens, body, prompt)
        if refused is not None:
            return refused
        words, finish = self._choice_words(0, prompt, body, None)
        usage = self._usage(prompt_tokens, len(words) + self.reasoning_tokens)
        model = body.get("model", "")
        base = {"id": "cmpl-mock", "object": "text_completion", "created": _CREATED, "model": model}
        if not body.get("stream"):
            choice = {"index": 0, "text": "".join(words), "finish_reason": finish, "logprobs": None}
            return JSONReply(body={**base, "choices": [choice], "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = []
        for j, word in enumerate(words):
            last = j == len(words) - 1
            choice = {"index": 0, "text": word, "finish_reason": finish if last else None}
            frames.append(sse_frame({**base, "choices": [choice]}))
        if include_usage:
            frames.append(sse_frame({**base, "choices": [], "usage": usage}))
        frames.append(b"data: [DONE]\n\n")
        return StreamReply(frames=frames)

    def _embed(self, body: dict[str, Any]) -> Reply:
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else list(raw or [])
        dims = int(body.get("dimensions") or 8)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vector = embedding_vector(str(text), dims)
            value: Any = vector
            if as_base64:
                value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(_count_words(str(t)) for t in inputs)
        return JSONReply(
            body={
                "object": "list",
                "data": data,
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # -- helpers ------------------------------------------------------------------------
    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    def _refuse(self, prompt_tokens: int, body: dict[str, Any], text: str) -> Reply | None:
        wanted = prompt_tokens + int(body.get("max_tokens") or 0)
        if wanted > self.context_window:
            return self._error(
                400,
                f"This model's maximum context length is {self.context_window} tokens. "
                f"However, you requested {wanted} tokens. Please reduce the length of the "
                "messages.",
                "invalid_request_error",
                "context_length_exceeded",
            )
        if self.blocked_word and self.blocked_word in text:
            return self._error(
                400,
                "The response was filtered due to the prompt triggering the content "
                "management policy.",
                "invalid_request_error",
                "content_filter",
            )
        return None

    def _error(self, status: int, message: str, type: str, code: str | None) -> JSONReply:
        return JSONReply(status=status, body=self.error_body(status, message, type=type, code=code))


def embedding_vector(text: str, dims: int) -> list[float]:
    """The mock's embedding of ``text``: ``dims`` floats in [-1, 1] from SHA-256."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend(round(b / 127.5 - 1.0, 6) for b in digest)
        counter += 1
    return out[:dims]


def _tool_call(index: int, tool: str, last_user: str) -> dict[str, Any]:
    import json

    return {
        "id": f"call_{index}",
        "type": "function",
        "function": {"name": tool, "arguments": json.dumps({"input": last_user})},
    }


@asynccontextmanager
async def mock_openai(**kwargs: Any) -> AsyncIterator[MockOpenAIServer]:
    """Serve a :class:`MockOpenAIServer` on loopback: ``async with mock_openai() as s: s.url``.

    Point clients at ``f"{server.url}/v1"``.
    """
    async with open_mock_server(MockOpenAIServer(**kwargs)) as server:
        yield server
