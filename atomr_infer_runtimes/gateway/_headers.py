"""Response headers an operator's clients read: who answered, the limits, the time taken.

- ``x-atomr-deployment``: the deployment that answered (a fallback shows here).
- ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``: OpenAI's names, from the
  answering deployment's rolling windows; sent only for the limits it has.
- ``openai-processing-ms``: from the request's arrival to the response head.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["deployment_headers", "format_reset", "processing_ms_header"]

Headers = list[tuple[bytes, bytes]]


def format_reset(seconds: float) -> str:
    """OpenAI's reset durations: ``"0s"``, ``"250ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def _limit_headers(
    kind: str, limit: int | None, available: float | None, reset_s: float | None
) -> Headers:
    if limit is None or available is None:
        return []
    remaining = max(0, math.floor(available + 1e-9))
    return [
        (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
        (f"x-ratelimit-reset-{kind}".encode(), format_reset(reset_s or 0.0).encode()),
    ]


def _limiter_of(cluster: Any, deployment: str) -> Any:
    lookup = getattr(cluster, "limiter", None)
    if lookup is None:
        return None
    try:
        return lookup(deployment)
    except KeyError:  # undeployed while the request ran
        return None


def deployment_headers(cluster: Any, deployment: str | None) -> Headers:
    """``x-atomr-deployment`` and the ``x-ratelimit-*`` headers of ``deployment``."""
    if not deployment:
        return []
    headers: Headers = [(b"x-atomr-deployment", deployment.encode("utf-8", "replace"))]
    limiter = _limiter_of(cluster, deployment)
    limits = getattr(limiter, "limits", None)
    stats = getattr(limiter, "statistics", None)
    if limits is None or not callable(stats):
        return headers
    if limits.requests_per_minute is None and limits.tokens_per_minute is None:
        return headers
    now = stats()
    # a backend whose statistics lack a field simply sends fewer headers
    for kind, limit in (
        ("requests", limits.requests_per_minute),
        ("tokens", limits.tokens_per_minute),
    ):
        available = getattr(now, f"{kind}_available", None)
        reset_s = getattr(now, f"{kind}_reset_s", None)
        headers += _limit_headers(kind, limit, available, reset_s)
    return headers


def processing_ms_header(started: float, now: float) -> tuple[bytes, bytes]:
    """``openai-processing-ms`` for a request that arrived at ``started`` (perf_counter)."""
    return (b"openai-processing-ms", str(max(0, round((now - started) * 1000))).encode())
