"""OpenAI's wire format, SDK-free: request bodies, response and stream parsing, errors.

:class:`OpenAIProvider` is the engine's :class:`~atomr_infer_remote.Provider` for the
OpenAI API, Azure OpenAI and OpenAI-compatible proxies (LiteLLM, vLLM).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from atomr_infer_core import (
    ExecuteBatch,
    FinishReason,
    ImageBase64Part,
    ImageUrlPart,
    Message,
    RequestKind,
    Secret,
    TextPart,
    TokenChunk,
    TokenUsage,
)
from atomr_infer_core.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    InferenceError,
    QuotaExceededError,
)
from atomr_infer_remote import ProviderRequest, SSEEvent, classify_http_status, error_message

from ._config import AzureAuth, OpenAIConfig
from ._responses_wire import ResponsesStreamParser, parse_responses_body, passes_through

__all__ = [
    "OpenAIProvider",
    "OpenAIStreamParser",
    "chat_body",
    "finish_reason",
    "message_json",
    "parse_usage",
]

_FINISH = {
    "stop": FinishReason.STOP,
    "end_turn": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "max_tokens": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
_OPERATION = {
    RequestKind.CHAT: "chat/completions",
    RequestKind.COMPLETION: "completions",
    RequestKind.EMBEDDING: "embeddings",
}
# in-band stream errors carry a type, not a status: classify them like the status
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "overloaded_error": 529,
}


def finish_reason(value: str | None) -> FinishReason | None:
    """OpenAI's finish reason as ours (unknown reasons count as ``stop``)."""
    if value is None:
        return None
    return _FINISH.get(value, FinishReason.STOP)


def parse_usage(usage: Mapping[str, Any] | None) -> TokenUsage | None:
    """``usage`` with cached prompt tokens and reasoning tokens, or ``None``."""
    if not usage:
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return TokenUsage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _part_json(part: Any) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImageUrlPart):
        image: dict[str, Any] = {"url": part.url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, ImageBase64Part):
        return {"type": "image_url", "image_url": {"url": part.data_url()}}
    raise TypeError(f"unsupported content part {type(part).__name__}")


def message_json(message: Message) -> dict[str, Any]:
    """One chat message in OpenAI's shape (text, image_url parts, tool calls)."""
    out: dict[str, Any] = {"role": str(message.role)}
    if isinstance(message.content, str):
        out["content"] = message.content
    else:
        out["content"] = [_part_json(p) for p in message.content]
    if message.tool_calls:
        out["tool_calls"] = [dict(c) for c in message.tool_calls]
        if out["content"] == "":
            out["content"] = None
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _sampling(batch: ExecuteBatch, config: OpenAIConfig, model: str) -> dict[str, Any]:
    s = batch.sampling
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
        value = getattr(s, name)
        if value is not None:
            out[name] = value
    if s.max_tokens is not None:
        field = str(config.max_tokens_field.value)
        if field == "auto":
            reasoning = model.lower().startswith(_REASONING_PREFIXES)
            field = "max_completion_tokens" if reasoning else "max_tokens"
        if batch.kind is RequestKind.COMPLETION:
            field = "max_tokens"
        out[field] = s.max_tokens
    if s.top_k is not None and config.send_top_k:
        out["top_k"] = s.top_k
    if s.stop:
        out["stop"] = list(s.stop)
    if s.n != 1:
        out["n"] = s.n
    if s.logprobs is not None:
        out["logprobs"] = s.logprobs if batch.kind is RequestKind.CHAT else s.top_logprobs
    if s.top_logprobs is not None and batch.kind is RequestKind.CHAT:
        out["top_logprobs"] = s.top_logprobs
    return out


def chat_body(batch: ExecuteBatch, config: OpenAIConfig, model: str) -> dict[str, Any]:
    """The JSON body for ``batch`` (chat, completion or embedding)."""
    body: dict[str, Any] = {"model": model}
    if batch.kind is RequestKind.EMBEDDING:
        body["input"] = list(batch.inputs or ())
        body["encoding_format"] = "float"
        if batch.dimensions is not None:
            body["dimensions"] = batch.dimensions
    else:
        if batch.kind is RequestKind.CHAT:
            body["messages"] = [message_json(m) for m in batch.messages or ()]
        else:
            body["prompt"] = batch.prompt
        body.update(_sampling(batch, config, model))
        if batch.tools:
            body["tools"] = [dict(t) for t in batch.tools]
        if batch.tool_choice is not None:
            body["tool_choice"] = batch.tool_choice
        if batch.response_format is not None:
            body["response_format"] = dict(batch.response_format)
        if batch.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
    if batch.user is not None:
        body["user"] = batch.user
    body.update(batch.extra)
    return body


def _tool_deltas(calls: Any) -> tuple[Mapping[str, Any], ...] | None:
    if not calls:
        return None
    return tuple({"index": c.get("index", i), **c} for i, c in enumerate(calls))


def _reasoning(message: Any) -> str:
    """Reasoning text of an OpenAI-compatible message or delta (``reasoning_content``, as
    DeepSeek, vLLM and LiteLLM send it, or ``reasoning``)."""
    if not isinstance(message, Mapping):
        return ""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) else ""


def _refine(provider: str, status: int, body: Any) -> InferenceError | None:
    if not isinstance(body, Mapping) or not isinstance(body.get("error"), Mapping):
        return None
    err = body["error"]
    code = str(err.get("code") or "")
    kind = str(err.get("type") or "")
    message = error_message(body)
    if code == "context_length_exceeded":
        return ContextLengthExceededError(
            f"{provider}: {message} (shorten the prompt or lower max_tokens)"
        )
    if code in ("content_filter", "content_policy_violation") or kind.startswith("content_filter"):
        return ContentFilteredError(f"{provider}: {message}", reason=message)
    if code == "insufficient_quota" or kind == "insufficient_quota":
        return QuotaExceededError(
            f"{provider}: the account has no quota left ({message}); add credit or raise the "
            "quota, retrying will not help",
            provider=provider,
        )
    return None


@attrs.define
class OpenAIStreamParser:
    """Chunks from ``chat.completion.chunk`` / ``text_completion`` events."""

    provider: str
    request_id: str
    finished: bool = False

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        data = event.data
        if data == "[DONE]":
            self.finished = True
            return ()
        if not data:
            return ()
        obj = json.loads(data)
        if obj.get("error"):
            raise self._stream_error(obj)
        out = [c for c in (self._choice(ch) for ch in obj.get("choices") or ()) if c is not None]
        usage = parse_usage(obj.get("usage"))
        if usage is not None:
            out.append(TokenChunk(request_id=self.request_id, usage=usage))
        return out

    def end(self) -> Sequence[TokenChunk]:
        # OpenAI-compatible servers often end without [DONE]; the body's end is enough
        return ()

    def _choice(self, choice: Mapping[str, Any]) -> TokenChunk | None:
        delta = choice.get("delta")
        text = (delta or {}).get("content") if delta is not None else choice.get("text")
        reasoning = _reasoning(delta)
        tools = _tool_deltas((delta or {}).get("tool_calls"))
        finish = finish_reason(choice.get("finish_reason"))
        logprobs = choice.get("logprobs")
        if not text and not reasoning and tools is None and finish is None and logprobs is None:
            return None
        return TokenChunk(
            request_id=self.request_id,
            text_delta=text or "",
            reasoning_delta=reasoning,
            index=int(choice.get("index") or 0),
            tool_call_deltas=tools,
            finish_reason=finish,
            logprobs=logprobs,
        )

    def _stream_error(self, obj: Mapping[str, Any]) -> InferenceError:
        err = obj["error"] if isinstance(obj["error"], Mapping) else {"message": str(obj["error"])}
        status = _TYPE_STATUS.get(str(err.get("type") or ""), 500)
        return classify_http_status(
            self.provider,
            status,
            {},
            json.dumps({"error": err}),
            refine=lambda s, b: _refine(self.provider, s, b),
        )


@attrs.define
class OpenAIProvider:
    """The engine's provider for OpenAI-shaped APIs. ``model`` is what is asked for."""

    config: OpenAIConfig
    model: str
    name: str = "openai"

    def passes_through(self, batch: ExecuteBatch) -> bool:
        """Whether ``batch`` is a Responses body for this upstream's ``/responses``
        (Azure's Responses API lives elsewhere: Azure deployments serve the translation)."""
        return passes_through(batch) and not self.config.is_azure

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        c = self.config
        passthrough = self.passes_through(batch)
        operation = "responses" if passthrough else _OPERATION[batch.kind]
        headers: dict[str, str] = {
            "accept": "text/event-stream" if batch.stream else "application/json"
        }
        if c.is_azure:
            deployment = c.azure_deployment or self.model
            base = str(c.azure_endpoint).rstrip("/")
            url = f"{base}/openai/deployments/{deployment}/{operation}?api-version={c.api_version}"
        else:
            url = f"{c.base_url.rstrip('/')}/{operation}"
        if credential is not None:
            if c.is_azure and c.azure_auth is AzureAuth.API_KEY:
                headers["api-key"] = credential.reveal()
            else:
                headers["authorization"] = f"Bearer {credential.reveal()}"
        if c.organization:
            headers["openai-organization"] = c.organization
        if c.project:
            headers["openai-project"] = c.project
        headers.update(c.extra_headers)
        stream = batch.stream and batch.kind is not RequestKind.EMBEDDING
        if passthrough:
            assert batch.passthrough is not None
            # the client's own Responses body: only the model is rewritten
            body = {**batch.passthrough.body, "model": self.model}
        else:
            body = chat_body(batch, c, self.model)
        return ProviderRequest(url=url, headers=headers, json=body, stream=stream)

    def parse_response(self, batch: ExecuteBatch, body: Any) -> Sequence[TokenChunk]:
        rid = batch.request_id
        if self.passes_through(batch):
            return parse_responses_body(body, request_id=rid, provider=self.name)
        usage = parse_usage(body.get("usage"))
        if batch.kind is RequestKind.EMBEDDING:
            rows = sorted(body.get("data") or (), key=lambda d: int(d.get("index", 0)))
            vectors = tuple(tuple(float(x) for x in row["embedding"]) for row in rows)
            usage = usage and TokenUsage(input_tokens=usage.input_tokens)
            return [TokenChunk(request_id=rid, embeddings=vectors, usage=usage)]
        out = []
        for choice in body.get("choices") or ():
            message = choice.get("message")
            text = (message or {}).get("content") if message is not None else choice.get("text")
            out.append(
                TokenChunk(
                    request_id=rid,
                    text_delta=text or "",
                    reasoning_delta=_reasoning(message),
                    index=int(choice.get("index") or 0),
                    tool_call_deltas=_tool_deltas((message or {}).get("tool_calls")),
                    finish_reason=finish_reason(choice.get("finish_reason")) or FinishReason.STOP,
                    logprobs=choice.get("logprobs"),
                )
            )
        if usage is not None:
            out.append(TokenChunk(request_id=rid, usage=usage))
        return out

    def stream_parser(self, batch: ExecuteBatch) -> OpenAIStreamParser | ResponsesStreamParser:
        if self.passes_through(batch):
            return ResponsesStreamParser(provider=self.name, request_id=batch.request_id)
        return OpenAIStreamParser(provider=self.name, request_id=batch.request_id)

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        return _refine(self.name, status, body)
