"""A mock Gemini API on loopback: AI Studio and Vertex AI ``generateContent`` paths.

Routes: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse`` (AI Studio, key in the ``x-goog-api-key`` header),
and ``POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:…``
(Vertex AI, ``Authorization: Bearer <token>``). ``require_api_key`` checks whichever the
path's flavour uses. Content is derived from the request so tests can assert exact text:

- candidate ``i`` answers ``"Echo: <text of the last user turn>"`` (``"Echo #i: …"`` for
  ``i > 0``; ``generationConfig.candidateCount`` candidates), streamed one word per SSE
  event; ``maxOutputTokens`` cuts it to that many words with ``finishReason="MAX_TOKENS"``.
  ``responseJsonSchema`` (or ``responseSchema``) is honoured: the answer is JSON built
  from the schema (``schema_answer``); JSON mode without one gives ``{"echo": <text>}``.
- with ``tools`` (and a function-calling mode other than ``NONE``) the model calls the
  first (or the only allowed) function with ``args {"input": <last user text>}``.
- ``usageMetadata``: ``promptTokenCount`` = words in ``systemInstruction`` and every
  turn (inline or file data counts 1), ``candidatesTokenCount`` = words sent so far
  (a function call counts 1); ``cached_tokens`` and ``thoughts_tokens`` are attributes
  tests may set. Every stream event carries the usage so far, as Gemini does.
- a prompt whose words plus ``maxOutputTokens`` exceed ``context_window`` gets a 400
  ``INVALID_ARGUMENT`` naming the token limit; a last user turn containing
  ``blocked_word`` gets ``promptFeedback.blockReason = "SAFETY"`` and no candidates.

Errors use Google's shape ``{"error": {"code", "message", "status"}}``; an injected 429 is
``RESOURCE_EXHAUSTED`` with a ``RetryInfo`` detail carrying ``retry_after`` (Gemini sends
no ``Retry-After`` header). :meth:`MockGeminiServer.error_event_after` queues an error
object inside the next stream.
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

__all__ = ["MockGeminiServer", "mock_gemini"]

_WORDS = re.compile(r"\s*\S+")
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_SAFETY = [
    {"category": c, "probability": "NEGLIGIBLE"}
    for c in (
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    )
]


def _parts_text(parts: Any) -> tuple[str, int]:
    texts: list[str] = []
    media = 0
    for part in parts or ():
        if "text" in part:
            texts.append(str(part["text"]))
        elif "inlineData" in part or "fileData" in part:
            media += 1
        elif "functionResponse" in part:
            texts.append(str(part["functionResponse"].get("response", "")))
    return " ".join(t for t in texts if t), media


class MockGeminiServer(MockProviderServer):
    """Gemini's wire format on both URL families; see the module docstring."""

    provider = "gemini"

    def __init__(self, *, context_window: int = 1_048_576, blocked_word: str = "FORBIDDEN") -> None:
        super().__init__()
        self.context_window = context_window
        self.blocked_word = blocked_word
        self.cached_tokens = 0
        self.thoughts_tokens = 0
        self._error_events: collections.deque[tuple[int, int, str]] = collections.deque()
        self.add_route("POST", "/v1beta/models/*", self.ai_studio)
        self.add_route("POST", "/v1/projects/*", self.vertex)

    # -- faults -------------------------------------------------------------------------
    def error_event_after(
        self, n_events: int, code: int = 503, message: str = "The model is overloaded."
    ) -> None:
        """The next stream sends ``n_events`` events, then an error object, and ends."""
        self._error_events.append((n_events, code, message))

    # -- provider hooks -----------------------------------------------------------------
    def error_body(self, status: int, message: str, *, type: str, code: str | None) -> Any:
        return {
            "error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
        }

    def presented_key(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return headers.get("x-goog-api-key")

    def malformed_frame(self) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"text": \n\n'

    def status_for_fault(self, fault: Fault) -> JSONReply:
        if fault.body is not None:
            return super().status_for_fault(fault)
        message = {
            429: "Resource has been exhausted (e.g. check quota).",
            503: "The model is overloaded. Please try again later.",
        }.get(fault.status, f"injected {fault.status}")
        body = self.error_body(fault.status, message, type="", code=None)
        if fault.status == 429 and fault.retry_after is not None:
            body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{fault.retry_after:g}s",
                }
            ]
        return JSONReply(status=fault.status, body=body, headers=dict(fault.headers))

    # -- routes -------------------------------------------------------------------------
    async def ai_studio(self, request: RecordedRequest) -> Reply:
        # /v1beta/models/{model}:{method}
        return self._dispatch(request, request.path.removeprefix("/v1beta/models/"))

    async def vertex(self, request: RecordedRequest) -> Reply:
        # /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}
        parts = request.path.split("/")
        if len(parts) < 10 or parts[4] != "locations" or parts[6:8] != ["publishers", "google"]:
            return self._error(404, f"no Vertex AI resource at {request.path}")
        return self._dispatch(request, parts[9])

    def _dispatch(self, request: RecordedRequest, target: str) -> Reply:
        model, _, method = target.partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return self._error(404, f"method {method!r} not found for model {model!r}")
        stream = method == "streamGenerateContent"
        if stream and "alt=sse" not in request.query:
            return self._error(400, "this mock streams only with ?alt=sse")
        return self._generate(request.json or {}, model, stream)

    # -- generation ---------------------------------------------------------------------
    def _generate(self, body: dict[str, Any], model: str, stream: bool) -> Reply:
        prompt_tokens, last_user = self._read_prompt(body)
        config = body.get("generationConfig") or {}
        limit = config.get("maxOutputTokens")
        wanted = prompt_tokens + int(limit or 0)
        if wanted > self.context_window:
            return self._error(
                400,
                f"The input token count ({wanted}) exceeds the maximum number of tokens "
                f"allowed ({self.context_window}).",
            )
        if self.blocked_word and self.blocked_word in last_user:
            feedback = {"blockReason": "SAFETY", "safetyRatings": _SAFETY}
            usage = self._usage(prompt_tokens, 0)
            reply = {"promptFeedback": feedback, "usageMetadata": usage, "modelVersion": model}
            return StreamReply(frames=[sse_frame(reply)]) if stream else JSONReply(body=reply)
        tool = self._tool_to_call(body)
        n = int(config.get("candidateCount") or 1)
        answers = [self._answer(i, last_user, limit, tool, config) for i in range(n)]
        if stream:
            return self._stream_reply(answers, prompt_tokens, model)
        candidates = [
            self._candidate(i, _joined(parts), finish) for i, (parts, finish) in enumerate(answers)
        ]
        output = sum(_count(parts) for parts, _ in answers)
        return JSONReply(
            body={
                "candidates": candidates,
                "usageMetadata": self._usage(prompt_tokens, output),
                "modelVersion": model,
                "responseId": "mock-response",
            }
        )

    def _stream_reply(
        self, answers: list[tuple[list[dict[str, Any]], str]], prompt_tokens: int, model: str
    ) -> Reply:
        events: list[dict[str, Any]] = []
        sent = 0
        longest = max(len(parts) for parts, _ in answers)
        for step in range(max(longest, 1)):
            candidates = []
            for i, (parts, finish) in enumerate(answers):
                if step < len(parts):
                    sent += _count([parts[step]])
                    last = step == len(parts) - 1
                    candidates.append(self._candidate(i, [parts[step]], finish if last else None))
                elif step == 0:
                    candidates.append(self._candidate(i, [], finish))
            usage = self._usage(prompt_tokens, sent)
            events.append({"candidates": candidates, "usageMetadata": usage, "modelVersion": model})
        frames = [sse_frame(e) for e in events]
        if self._error_events:
            n, code, message = self._error_events.popleft()
            error = self.error_body(code, message, type="", code=None)
            frames = [*frames[:n], sse_frame(error)]
        return StreamReply(frames=frames)

    def _answer(
        self, index: int, last_user: str, limit: Any, tool: str | None, config: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], str]:
        if tool is not None:
            return [{"functionCall": {"name": tool, "args": {"input": last_user}}}], "STOP"
        prefix = "Echo:" if index == 0 else f"Echo #{index}:"
        words = _WORDS.findall(f"{prefix} {last_user}".rstrip())
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        if schema is not None:
            words = _WORDS.findall(schema_answer(schema, last_user))
        elif config.get("responseMimeType") == "application/json":
            words = _WORDS.findall(schema_answer({"properties": {"echo": {}}}, last_user))
        finish = "STOP"
        if limit is not None and len(words) > int(limit):
            words, finish = words[: int(limit)], "MAX_TOKENS"
        return [{"text": w} for w in words], finish

    def _candidate(
        self, index: int, parts: list[dict[str, Any]], finish: str | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
        if finish is not None:
            out["finishReason"] = finish
            out["safetyRatings"] = _SAFETY
        return out

    def _read_prompt(self, body: dict[str, Any]) -> tuple[int, str]:
        system = body.get("systemInstruction") or body.get("system_instruction") or {}
        tokens = len(_parts_text(system.get("parts"))[0].split())
        last_user = ""
        for content in body.get("contents") or ():
            text, media = _parts_text(content.get("parts"))
            tokens += len(text.split()) + media
            if content.get("role", "user") == "user":
                last_user = text
        return tokens, last_user

    def _tool_to_call(self, body: dict[str, Any]) -> str | None:
        declarations = [
            d for tool in body.get("tools") or () for d in tool.get("functionDeclarations") or ()
        ]
        config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        if not declarations or config.get("mode") == "NONE":
            return None
        allowed = config.get("allowedFunctionNames") or []
        return str(allowed[0] if allowed else declarations[0]["name"])

    def _usage(self, prompt: int, candidates: int) -> dict[str, int]:
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates + self.thoughts_tokens,
        }
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        return usage

    def _error(self, status: int, message: str) -> JSONReply:
        return JSONReply(status=status, body=self.error_body(status, message, type="", code=None))


def _joined(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Word parts joined into one text part, as a non-streamed answer has them."""
    texts = [p["text"] for p in parts if "text" in p]
    others = [p for p in parts if "text" not in p]
    return ([{"text": "".join(texts)}] if texts else []) + others


def _count(parts: list[dict[str, Any]]) -> int:
    return sum(len(p["text"].split()) if "text" in p else 1 for p in parts)


@asynccontextmanager
async def mock_gemini(**kwargs: Any) -> AsyncIterator[MockGeminiServer]:
    """Serve a :class:`MockGeminiServer` on loopback: ``async with mock_gemini() as s``.

    AI Studio clients use ``f"{server.url}/v1beta/"`` as the endpoint; Vertex clients use
    ``server.url`` as the API endpoint.
    """
    async with open_mock_server(MockGeminiServer(**kwargs)) as server:
        yield server
