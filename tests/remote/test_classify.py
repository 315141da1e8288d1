"""Status and body classification."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
from atomr_infer_remote import classify_http_status

NOW = 1_763_800_000.0


def openai_body(message: str, code: str | None = None, param: str | None = None) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
    ).encode()


@pytest.mark.parametrize(
    ("status", "cls", "retryable", "breaker"),
    [
        (400, BadRequestError, False, False),
        (401, UnauthorizedError, False, False),
        (403, ForbiddenError, False, False),
        (404, NotFoundError, False, False),
        (408, RequestTimeoutError, True, True),
        (409, ServerError, True, True),
        (413, PayloadTooLargeError, False, False),
        (418, BadRequestError, False, False),
        (422, BadRequestError, False, False),
        (429, RateLimitedError, True, False),
        (500, ServerError, True, True),
        (502, ServerError, True, True),
        (503, ServerError, True, True),
        (529, ServerError, True, True),
        (302, InternalError, False, False),
    ],
)
def test_status_table(
    status: int, cls: type[InferenceError], retryable: bool, breaker: bool
) -> None:
    err = classify_http_status(ProviderKind.OPENAI, status, {}, b"nope", now_unix=NOW)
    assert type(err) is cls
    assert err.retryable is retryable
    assert err.counts_as_circuit_failure is breaker
    assert "nope" in err.message


def test_429_carries_retry_after_from_headers() -> None:
    err = classify_http_status("openai", 429, {"Retry-After": "20"}, b"{}", now_unix=NOW)
    assert isinstance(err, RateLimitedError)
    assert err.retry_after == 20.0
    assert err.provider == "openai"
    assert "retry after 20s" in err.message


def test_429_without_retry_after() -> None:
    err = classify_http_status("anthropic", 429, {}, None, now_unix=NOW)
    assert isinstance(err, RateLimitedError)
    assert err.retry_after is None


def test_server_error_keeps_status_and_message_from_json() -> None:
    body = json.dumps(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    err = classify_http_status("anthropic", 529, {}, body, now_unix=NOW)
    assert isinstance(err, ServerError)
    assert (err.status, err.body) == (529, "Overloaded")


def test_bad_request_names_param() -> None:
    err = classify_http_status("openai", 400, {}, openai_body("bad temp", param="temperature"))
    assert isinstance(err, BadRequestError)
    assert err.param == "temperature"


@pytest.mark.parametrize(
    "body",
    [
        openai_body(
            "This model's maximum context length is 8192 tokens.", code="context_length_exceeded"
        ),
        json.dumps(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 210000 tokens > 200000 maximum",
                },
            }
        ),
        json.dumps(
            {
                "error": {
                    "code": 400,
                    "message": "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).",
                    "status": "INVALID_ARGUMENT",
                }
            }
        ),
    ],
)
def test_context_length_phrasings(body: str | bytes) -> None:
    err = classify_http_status("x", 400, {}, body)
    assert isinstance(err, ContextLengthExceededError)


def test_content_filter_body() -> None:
    err = classify_http_status("openai", 400, {}, openai_body("filtered", code="content_filter"))
    assert isinstance(err, ContentFilteredError)


def test_insufficient_quota_429_is_not_retryable() -> None:
    body = openai_body("You exceeded your current quota", code="insufficient_quota")
    err = classify_http_status("openai", 429, {"retry-after": "1"}, body)
    assert isinstance(err, QuotaExceededError)
    assert not err.retryable


def test_refine_hook_wins_and_sees_parsed_json() -> None:
    seen: list[tuple[int, Any]] = []

    def refine(status: int, parsed: Any) -> InferenceError | None:
        seen.append((status, parsed))
        return ContentFilteredError("custom", reason="x") if status == 400 else None

    err = classify_http_status("custom", 400, {}, b'{"a": 1}', refine=refine)
    assert isinstance(err, ContentFilteredError) and err.message == "custom"
    err = classify_http_status("custom", 500, {}, b"plain", refine=refine)
    assert isinstance(err, ServerError)
    assert seen == [(400, {"a": 1}), (500, "plain")]


def test_long_text_body_is_truncated() -> None:
    err = classify_http_status("openai", 500, {}, "x" * 5000)
    assert isinstance(err, ServerError)
    assert len(err.body) == 1000
