"""Turn an upstream HTTP status (and its body) into a typed ``InferenceError``.

Pure: headers, body and the current Unix time are arguments. A provider passes
``refine`` to recognise its own error bodies first; a small generic refinement then
catches the phrasings every provider shares (context length, content filter, quota).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from atomr_infer_core import ProviderKind
from atomr_infer_core.errors import (
    BadRequestError,
    ContentFilteredError,
    ContextLengthExceededError,
    ForbiddenError,
    InferenceError,
    InternalError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    UnauthorizedError,
)

from ._backoff import parse_retry_after

__all__ = ["Refine", "classify_http_status", "error_message", "parse_error_body"]

#: a provider's hook: ``(status, parsed JSON body or text) -> error or None``
Refine = Callable[[int, Any], InferenceError | None]

_MAX_BODY = 1000

_CONTEXT_PHRASES = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the maximum number of tokens",
    "input token count",
)
_FILTER_PHRASES = ("content_filter", "content_policy_violation", "content management policy")


def parse_error_body(body: bytes | str | None) -> Any:
    """The body as parsed JSON when it is JSON, else as text (``""`` for none)."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else body
    try:
        return json.loads(text)
    except ValueError:
        return text


def error_message(parsed: Any) -> str:
    """The human message inside a provider error body (OpenAI, Anthropic, Gemini)."""
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict):
            msg = err.get("message")
            if isinstance(msg, str) and msg:
                return msg
        elif isinstance(err, str) and err:
            return err
        message = parsed.get("message")
        if isinstance(message, str):
            return message
        return json.dumps(parsed)[:_MAX_BODY]
    text = str(parsed).strip()
    return text[:_MAX_BODY]


def _error_field(parsed: Any, name: str) -> str | None:
    if isinstance(parsed, dict):
        err = parsed.get("error")
        value = err.get(name) if isinstance(err, dict) else None
        if isinstance(value, str):
            return value
    return None


def _refine_generic(provider: str, status: int, parsed: Any, message: str) -> InferenceError | None:
    code = (_error_field(parsed, "code") or "").lower()
    kind = (_error_field(parsed, "type") or "").lower()
    haystack = f"{code} {kind} {message}".lower()
    if status == 429 or code == "insufficient_quota" or kind == "insufficient_quota":
        if "insufficient_quota" in haystack or "exceeded your current quota" in haystack:
            return QuotaExceededError(
                f"{provider}: the account has no quota left ({message}); add credit or raise "
                "the quota, retrying will not help",
                provider=provider,
            )
    if 400 <= status < 500 and status != 429:
        if any(p in haystack for p in _CONTEXT_PHRASES):
            return ContextLengthExceededError(
                f"{provider}: {message} (shorten the prompt or lower max_tokens)"
            )
        if any(p in haystack for p in _FILTER_PHRASES):
            return ContentFilteredError(f"{provider}: {message}", reason=message)
    return None


def classify_http_status(
    provider: ProviderKind | str,
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | None,
    *,
    now_unix: float | None = None,
    refine: Refine | None = None,
) -> InferenceError:
    """Map an upstream error response to the error the caller should see.

    429 → ``RateLimitedError`` with ``retry_after_s`` from the headers (or
    ``QuotaExceededError`` for ``insufficient_quota``); 400/422 → ``BadRequestError``;
    401, 403, 404, 413 → their classes; 408 → ``RequestTimeoutError``; 409 and every
    5xx (503, Anthropic's 529) → ``ServerError`` (retryable). ``refine`` sees
    ``(status, parsed body)`` first and may return a more specific error.
    """
    name = str(provider)
    parsed = parse_error_body(body)
    if refine is not None:
        refined = refine(status, parsed)
        if refined is not None:
            return refined
    message = error_message(parsed) or f"HTTP {status}"
    generic = _refine_generic(name, status, parsed, message)
    if generic is not None:
        return generic
    return _by_status(name, status, headers, parsed, message, now_unix)


def _by_status(
    name: str,
    status: int,
    headers: Mapping[str, str],
    parsed: Any,
    message: str,
    now_unix: float | None,
) -> InferenceError:
    if status == 429:
        now = time.time() if now_unix is None else now_unix
        retry_after = parse_retry_after(headers, now)
        hint = f"retry after {retry_after:g}s" if retry_after is not None else "retry later"
        return RateLimitedError(
            f"{name} rate-limited the request ({message}); {hint}",
            provider=name,
            retry_after_s=retry_after,
        )
    if status in (400, 422):
        return BadRequestError(
            f"{name} rejected the request: {message}", param=_error_field(parsed, "param")
        )
    if status == 401:
        return UnauthorizedError(
            f"{name} refused the credentials ({message}); check the deployment's api_key"
        )
    if status == 403:
        return ForbiddenError(
            f"{name} forbids this request ({message}); check the key's permissions"
        )
    if status == 404:
        return NotFoundError(f"{name} answered 404: {message}; check the model name and base_url")
    if status == 408:
        return RequestTimeoutError(
            f"{name} timed out reading the request ({message})", phase="upstream"
        )
    if status == 413:
        return PayloadTooLargeError(f"{name} says the request is too large: {message}")
    if status == 409 or 500 <= status <= 599:
        return ServerError(
            f"{name} failed with HTTP {status}: {message}",
            status=status,
            body=message[:_MAX_BODY],
        )
    if 400 <= status < 500:
        return BadRequestError(f"{name} rejected the request with HTTP {status}: {message}")
    return InternalError(f"unexpected HTTP {status} from {name}: {message}")
