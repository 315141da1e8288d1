"""Gemini ``generateContent`` wire format (AI Studio and Vertex AI), SDK-free and sans-IO.

:func:`build_request_body` turns an ``ExecuteBatch`` into a ``generateContent`` body;
:class:`ResponseState` lifts a JSON answer or each ``streamGenerateContent?alt=sse``
event into ``TokenChunk`` values (the two share one shape); :func:`refine_error` turns a
Google error body (``{"error": {"code", "message", "status", "details"}}``) into a typed
error. URLs live here too (:func:`ai_studio_url`, :func:`vertex_url`), and
:class:`GeminiProvider`, the engine's ``Provider`` built from them. No I/O, no clock.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs

from atomr_infer_remote import ProviderRequest, SSEEvent

if TYPE_CHECKING:
    from ._config import GeminiConfig

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
    ContentFilteredError,
    ContextLengthExceededError,
    ForbiddenError,
    InferenceError,
    MalformedStreamError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    UnauthorizedError,
)

__all__ = [
    "AI_STUDIO_ENDPOINT",
    "GeminiProvider",
    "ResponseState",
    "ai_studio_url",
    "build_request_body",
    "error_from_payload",
    "map_finish_reason",
    "parse_usage",
    "refine_error",
    "vertex_url",
]

AI_STUDIO_ENDPOINT = "https://generativelanguage.googleapis.com/v1beta/"

_FINISH = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
}

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


# --------------------------------------------------------------------------- URLs


def _method(stream: bool) -> str:
    return ":streamGenerateContent?alt=sse" if stream else ":generateContent"


def ai_studio_url(endpoint: str, model: str, *, stream: bool) -> str:
    """``{endpoint}models/{model}:generateContent`` (or the streaming form)."""
    base = endpoint if endpoint.endswith("/") else endpoint + "/"
    name = model.removeprefix("models/")
    return f"{base}models/{quote(name, safe='.-_')}{_method(stream)}"


def vertex_url(
    project: str, location: str, model: str, *, stream: bool, endpoint: str | None = None
) -> str:
    """Vertex AI's publisher-model URL; ``location="global"`` uses the global host.

    ``endpoint`` replaces ``https://{location}-aiplatform.googleapis.com`` (tests,
    private service connect).
    """
    if endpoint is None:
        host = (
            "aiplatform.googleapis.com"
            if location == "global"
            else f"{location}-aiplatform.googleapis.com"
        )
        endpoint = f"https://{host}"
    name = model.removeprefix("models/")
    if "/" not in name:
        name = f"publishers/google/models/{name}"
    return (
        f"{endpoint.rstrip('/')}/v1/projects/{quote(project, safe='')}/locations/"
        f"{quote(location, safe='')}/{name}{_method(stream)}"
    )


# --------------------------------------------------------------------------- request


def build_request_body(
    batch: ExecuteBatch,
    *,
    safety_settings: Iterable[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The JSON body of ``generateContent`` for ``batch``.

    System and developer messages go to ``systemInstruction``; assistant turns are role
    ``model``; tool results become ``functionResponse`` parts named after the call they
    answer. Raises BadRequestError for embeddings (a different endpoint).
    """
    if batch.kind is RequestKind.EMBEDDING:
        raise BadRequestError("this Gemini runner serves generateContent only", param="input")
    messages = batch.messages or (Message(role=Role.USER, content=batch.prompt or ""),)
    system, contents = _translate_messages(messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    config = _generation_config(batch)
    if config:
        body["generationConfig"] = config
    if safety_settings:
        body["safetySettings"] = [dict(s) for s in safety_settings]
    if batch.tools:
        body["tools"] = _tools(batch.tools)
    if batch.tool_choice is not None:
        tool_config = _tool_config(batch.tool_choice)
        if tool_config:
            body["toolConfig"] = tool_config
    body.update(batch.extra)
    return body


def _generation_config(batch: ExecuteBatch) -> dict[str, Any]:
    s = batch.sampling
    config: dict[str, Any] = {}
    for key, value in (
        ("temperature", s.temperature),
        ("topP", s.top_p),
        ("topK", s.top_k),
        ("maxOutputTokens", s.max_tokens),
        ("seed", s.seed),
        ("presencePenalty", s.presence_penalty),
        ("frequencyPenalty", s.frequency_penalty),
    ):
        if value is not None:
            config[key] = value
    if s.stop:
        config["stopSequences"] = list(s.stop)
    if s.n != 1:
        config["candidateCount"] = s.n
    fmt = (batch.response_format or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = ((batch.response_format or {}).get("json_schema") or {}).get("schema")
        if schema is not None:
            config["responseJsonSchema"] = schema
    return config


def _translate_messages(messages: Iterable[Message]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for msg in messages:
        if msg.role in (Role.SYSTEM, Role.DEVELOPER):
            system.append(msg.text)
            continue
        role = "model" if msg.role is Role.ASSISTANT else "user"
        if msg.role is Role.TOOL:
            parts = [_function_response(msg, call_names)]
        else:
            parts = _parts(msg.content)
            for call in msg.tool_calls or ():
                fn = call.get("function") or {}
                call_names[str(call.get("id"))] = fn.get("name") or ""
                parts.append({"functionCall": {"name": fn.get("name") or "", "args": _args(fn)}})
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return "\n".join(s for s in system if s), contents


def _args(fn: Mapping[str, Any]) -> Any:
    raw = fn.get("arguments") or "{}"
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return {"arguments": raw}


def _function_response(msg: Message, call_names: Mapping[str, str]) -> dict[str, Any]:
    text = msg.text
    try:
        result: Any = json.loads(text)
    except ValueError:
        result = text
    if not isinstance(result, dict):
        result = {"content": result}
    name = msg.name or call_names.get(str(msg.tool_call_id), "") or str(msg.tool_call_id or "")
    return {"functionResponse": {"name": name, "response": result}}


def _parts(content: str | tuple[Any, ...]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            out.append({"text": part.text})
        elif isinstance(part, ImageBase64Part):
            out.append({"inlineData": {"mimeType": part.mime, "data": part.data}})
        elif isinstance(part, ImageUrlPart):
            match = _DATA_URL.match(part.url)
            if match:
                out.append({"inlineData": {"mimeType": match["mime"], "data": match["data"]}})
            else:
                mime = mimetypes.guess_type(part.url.split("?", 1)[0])[0] or "image/jpeg"
                out.append({"fileData": {"mimeType": mime, "fileUri": part.url}})
    return out


def _tools(tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for tool in tools:
        fn = tool.get("function")
        if tool.get("type", "function") == "function" and isinstance(fn, Mapping):
            decl: dict[str, Any] = {"name": fn["name"]}
            if fn.get("description"):
                decl["description"] = fn["description"]
            if fn.get("parameters"):
                decl["parameters"] = fn["parameters"]
            declarations.append(decl)
        else:
            native.append(dict(tool))  # Gemini-shaped (googleSearch, codeExecution): as is
    out = [{"functionDeclarations": declarations}] if declarations else []
    return out + native


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str):
        mode = {"auto": "AUTO", "required": "ANY", "none": "NONE"}.get(choice)
        return {"functionCallingConfig": {"mode": mode}} if mode else None
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        if isinstance(fn, Mapping) and fn.get("name"):
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [fn["name"]]}}
    return None


# --------------------------------------------------------------------------- answers


def map_finish_reason(reason: str | None) -> FinishReason | None:
    """Gemini's ``finishReason`` as a FinishReason; unknown reasons are ``stop``."""
    if not reason or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    return _FINISH.get(reason, FinishReason.STOP)


def parse_usage(meta: Mapping[str, Any]) -> TokenUsage:
    """``usageMetadata`` as TokenUsage: thoughts are output (billed so) and reasoning;
    ``cachedContentTokenCount`` is part of ``promptTokenCount``."""
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=int(meta.get("candidatesTokenCount") or 0) + thoughts,
        reasoning_tokens=thoughts,
        cached_tokens=int(meta.get("cachedContentTokenCount") or 0),
    )


@attrs.define
class ResponseState:
    """Per-request state; :meth:`feed` takes a whole JSON answer or one SSE event.

    Function calls arrive whole (not in pieces); each becomes an OpenAI-shaped tool-call
    delta with a fresh id. A candidate that called functions and stopped normally
    finishes with ``tool_calls``.
    """

    request_id: str = ""
    #: candidate index → number of function calls seen so far
    calls: dict[int, int] = attrs.Factory(dict)

    def feed_text(self, data: str) -> list[TokenChunk]:
        """The chunks of one SSE event's data (empty data yields nothing)."""
        if not data.strip():
            return []
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise MalformedStreamError(
                f"Gemini sent an SSE event that is not JSON: {exc}"
            ) from None
        if not isinstance(payload, dict):
            raise MalformedStreamError("Gemini sent an SSE event whose data is not an object")
        return self.feed(payload)

    def feed(self, payload: Mapping[str, Any]) -> list[TokenChunk]:
        """The chunks of one ``GenerateContentResponse``; raises typed errors for an
        ``error`` payload and for a prompt the safety filters blocked."""
        if isinstance(payload.get("error"), Mapping):
            raise error_from_payload(payload["error"])
        candidates = payload.get("candidates") or []
        feedback = payload.get("promptFeedback") or {}
        if not candidates and feedback.get("blockReason"):
            raise ContentFilteredError(
                f"Gemini blocked the prompt ({feedback['blockReason']}); rephrase it or "
                "relax the deployment's safety settings",
                reason=str(feedback["blockReason"]),
            )
        chunks = [self._candidate(c, i) for i, c in enumerate(candidates)]
        chunks = [c for c in chunks if c is not None]
        if isinstance(payload.get("usageMetadata"), Mapping):
            usage = parse_usage(payload["usageMetadata"])
            if chunks:
                chunks[-1] = attrs.evolve(chunks[-1], usage=usage)
            else:
                chunks.append(TokenChunk(request_id=self.request_id, usage=usage))
        return chunks

    def _candidate(self, cand: Mapping[str, Any], position: int) -> TokenChunk | None:
        index = int(cand.get("index", position))
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or ():
            if part.get("thought"):
                continue  # thought summaries are not the answer
            if "text" in part:
                texts.append(part.get("text") or "")
            elif isinstance(part.get("functionCall"), Mapping):
                calls.append(self._call(index, part["functionCall"]))
        reason = map_finish_reason(cand.get("finishReason"))
        if reason is FinishReason.STOP and self.calls.get(index):
            reason = FinishReason.TOOL_CALLS
        if not texts and not calls and reason is None:
            return None
        return TokenChunk(
            request_id=self.request_id,
            index=index,
            text_delta="".join(texts),
            tool_call_deltas=tuple(calls) or None,
            finish_reason=reason,
        )

    def _call(self, candidate: int, call: Mapping[str, Any]) -> dict[str, Any]:
        n = self.calls.get(candidate, 0)
        self.calls[candidate] = n + 1
        return {
            "index": n,
            "id": call.get("id") or f"call_{self.request_id or 'gemini'}_{candidate}_{n}",
            "type": "function",
            "function": {
                "name": call.get("name") or "",
                "arguments": json.dumps(call.get("args") or {}, separators=(",", ":")),
            },
        }


# --------------------------------------------------------------------------- errors

_TOKEN_LIMIT = re.compile(
    r"input token count \(?(\d+)\)? exceeds the maximum number of tokens allowed \(?(\d+)\)?",
    re.IGNORECASE,
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _retry_delay(details: Any) -> float | None:
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match[1])
    return None


def _reasons(details: Any) -> set[str]:
    return {
        str(d.get("reason"))
        for d in (details if isinstance(details, list) else ())
        if isinstance(d, Mapping) and d.get("reason")
    }


def _known_error(
    error: Mapping[str, Any], *, status: int | None, retry_after: float | None
) -> InferenceError | None:
    code = str(error.get("status") or "")
    message = str(error.get("message") or code or "unknown error")
    text = f"Gemini {code or status or 'error'}: {message}"
    details = error.get("details")
    if code == "RESOURCE_EXHAUSTED":
        wait = retry_after if retry_after is not None else _retry_delay(details)
        return RateLimitedError(text, provider="gemini", retry_after_s=wait)
    if code == "UNAUTHENTICATED" or "API_KEY_INVALID" in _reasons(details):
        return UnauthorizedError(f"{text} (check the deployment's API key or credentials)")
    if code == "PERMISSION_DENIED":
        return ForbiddenError(f"{text} (the credential may not use this model or project)")
    if code == "INVALID_ARGUMENT":
        match = _TOKEN_LIMIT.search(message)
        if match or ("token count" in message.lower() and "exceeds" in message.lower()):
            return ContextLengthExceededError(
                f"{text} (shorten the prompt)",
                tokens=int(match[1]) if match else None,
                max_tokens=int(match[2]) if match else None,
            )
        return BadRequestError(text)
    if code == "FAILED_PRECONDITION":
        return BadRequestError(text)
    if code == "NOT_FOUND":
        return NotFoundError(f"{text} (check the model name and the API version)")
    if code == "DEADLINE_EXCEEDED":
        return RequestTimeoutError(text, phase="first_byte")
    if code in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED"):
        return ServerError(text, status=status or int(error.get("code") or 500), body=message)
    return None


def error_from_payload(error: Mapping[str, Any]) -> InferenceError:
    """The typed error for a Google error object met inside a stream (unknown statuses
    are server errors: retryable before output)."""
    refined = _known_error(error, status=None, retry_after=None)
    if refined is not None:
        return refined
    code = int(error.get("code") or 500)
    message = str(error.get("message") or "unknown error")
    return ServerError(f"Gemini error {code}: {message}", status=code, body=message)


def refine_error(
    status: int, body: Any, *, retry_after: float | None = None
) -> InferenceError | None:
    """A typed error from a Google error body, or ``None`` to use the status table.

    ``body`` is the parsed JSON (or the raw text). ``RESOURCE_EXHAUSTED`` →
    RateLimitedError (``RetryInfo.retryDelay`` when no ``retry_after`` header value),
    ``INVALID_ARGUMENT`` about the token limit → ContextLengthExceededError,
    ``PERMISSION_DENIED`` → ForbiddenError, an invalid API key → UnauthorizedError.
    """
    payload = _parsed(body)
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]  # streaming endpoints without alt=sse wrap errors in a list
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), Mapping):
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


class GeminiProvider:
    """Gemini's ``generateContent`` as the remote engine's ``Provider``."""

    name = "gemini"

    def __init__(self, config: GeminiConfig, model: str) -> None:
        self.config = config
        self.model = model
        self._urls = {s: config.url(model, stream=s) for s in (False, True)}
        self._safety = [{"category": s.category, "threshold": s.threshold} for s in config.safety]

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        body = build_request_body(batch, safety_settings=self._safety)
        headers = dict(self.config.extra_headers)
        if credential is not None:
            if self.config.is_vertex:
                headers["authorization"] = f"Bearer {credential.reveal()}"
            else:
                # sent, unlike the original (which built the keyed URL after the request)
                headers["x-goog-api-key"] = credential.reveal()
        return ProviderRequest(
            url=self._urls[batch.stream], headers=headers, json=body, stream=batch.stream
        )

    def parse_response(self, batch: ExecuteBatch, body: Any) -> Sequence[TokenChunk]:
        if not isinstance(body, dict):
            raise MalformedStreamError("gemini: the answer is not a JSON object")
        chunks = ResponseState(request_id=batch.request_id).feed(body)
        if any(c.finish_reason for c in chunks):
            return chunks
        # a complete answer that names no reason finished normally
        done = TokenChunk(request_id=batch.request_id, finish_reason=FinishReason.STOP)
        return [*chunks, done]

    def stream_parser(self, batch: ExecuteBatch) -> _ContentStream:
        return _ContentStream(ResponseState(request_id=batch.request_id))

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        return refine_error(status, body)


class _ContentStream:
    """One streamed answer. Gemini has no end marker: the body ends after the event that
    carries the last ``finishReason``; ending before one means the stream was cut."""

    finished = False

    def __init__(self, state: ResponseState) -> None:
        self.state = state
        self.saw_finish = False

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        chunks = self.state.feed_text(event.data)
        if any(c.finish_reason is not None for c in chunks):
            self.saw_finish = True
        return chunks

    def end(self) -> Sequence[TokenChunk]:
        if not self.saw_finish:
            raise MalformedStreamError(
                "gemini: the stream ended before a finishReason (the connection was cut); "
                "the answer is incomplete"
            )
        return []
