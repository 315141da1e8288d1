"""atomr-infer remote core: sans-IO state machines and their thin trio/httpx shells."""

from __future__ import annotations

from ._backoff import compute_backoff as compute_backoff, parse_retry_after as parse_retry_after
from ._breaker import (
    BreakerCore as BreakerCore,
    BreakerPermit as BreakerPermit,
    BreakerStatistics as BreakerStatistics,
    CircuitBreaker as CircuitBreaker,
)
from ._classify import (
    classify_http_status as classify_http_status,
    error_message as error_message,
    parse_error_body as parse_error_body,
)
from ._retry import RetryDecision as RetryDecision, RetryEngine as RetryEngine
from ._sse import SSEDecoder as SSEDecoder, SSEEvent as SSEEvent, aiter_sse as aiter_sse

__all__: list[str] = [
    "BreakerCore",
    "BreakerPermit",
    "BreakerStatistics",
    "CircuitBreaker",
    "RetryDecision",
    "RetryEngine",
    "SSEDecoder",
    "SSEEvent",
    "aiter_sse",
    "classify_http_status",
    "compute_backoff",
    "error_message",
    "parse_error_body",
    "parse_retry_after",
]
