"""InferenceError → OpenAI's error body, HTTP status and retry headers.

The mapping is DESIGN.md's table; the headers steer the official SDKs (openai-python
retries on 408/409/429/5xx unless ``x-should-retry: false``, and waits ``retry-after-ms``
or ``Retry-After`` when it lies in (0, 60] seconds).
"""

from __future__ import annotations

import json
import math
from typing import Any

from atomr_infer_core import errors

__all__ = ["error_body", "error_headers", "error_response", "error_sse_event"]

#: errors a client retry cannot fix, even though their status is 429 or 5xx
_NO_RETRY: tuple[type[errors.InferenceError], ...] = (
    errors.QuotaExceededError,
    errors.BudgetExceededError,
    errors.InternalError,
    errors.DeploymentFailedError,
)


def error_body(exc: errors.InferenceError) -> dict[str, Any]:
    """OpenAI's ``{"error": {"message", "type", "param", "code"}}`` for ``exc``."""
    param = getattr(exc, "param", None) if isinstance(exc, errors.BadRequestError) else None
    return {
        "error": {
            "message": exc.message,
            "type": exc.error_type,
            "param": param,
            "code": exc.code,
        }
    }


def error_headers(exc: errors.InferenceError) -> list[tuple[bytes, bytes]]:
    """``Retry-After``/``retry-after-ms`` when known, ``x-should-retry`` when it matters."""
    headers: list[tuple[bytes, bytes]] = []
    retry_after = exc.retry_after
    if retry_after is not None and retry_after >= 0:
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
        headers.append((b"retry-after-ms", str(round(retry_after * 1000)).encode()))
    status = exc.http_status
    retryable_status = status in (408, 409, 429) or status >= 500
    if isinstance(exc, _NO_RETRY) or (
        retryable_status and retry_after is not None and retry_after > 60
    ):
        headers.append((b"x-should-retry", b"false"))
    elif retryable_status:
        headers.append((b"x-should-retry", b"true"))
    else:  # a 4xx about the request itself: sending it again changes nothing
        headers.append((b"x-should-retry", b"false"))
    return headers


def error_response(exc: errors.InferenceError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, extra headers and JSON body for an error that happened before any output."""
    body = json.dumps(error_body(exc)).encode()
    return exc.http_status, error_headers(exc), body


def error_sse_event(exc: errors.InferenceError) -> bytes:
    """The one in-band event that ends a stream which already began."""
    return b"data: " + json.dumps(error_body(exc)).encode() + b"\n\n"
