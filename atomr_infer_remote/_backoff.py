"""Backoff delays and ``Retry-After`` parsing: pure functions of their inputs.

Randomness comes from the caller (a ``random.Random``) and the current time is an
argument, so both are exact under test.
"""

from __future__ import annotations

import datetime
import math
import random
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from atomr_infer_core import JitterKind, RetryPolicy

__all__ = ["compute_backoff", "parse_retry_after"]


def compute_backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after the failed attempt ``attempt`` (0 is the first try).

    ``initial_backoff · backoff_multiplier ** attempt`` capped at ``max_backoff``, then
    jittered: ``none`` keeps it, ``equal`` draws from [d/2, d], ``full`` from [0, d].
    """
    if attempt < 0:
        raise ValueError(f"attempt counts from 0 (got {attempt})")
    try:
        base = policy.initial_backoff * policy.backoff_multiplier**attempt
    except OverflowError:
        base = math.inf
    capped = min(base, policy.max_backoff)
    jitter = JitterKind(policy.jitter)
    if jitter is JitterKind.NONE:
        return capped
    if jitter is JitterKind.EQUAL:
        half = capped / 2
        return half + half * rng.random()
    return capped * rng.random()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _seconds(text: str, scale: float) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return max(0.0, value * scale)


def _http_date(text: str, now_unix: float) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is always UTC
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now_unix)


def parse_retry_after(headers: Mapping[str, str], now_unix: float) -> float | None:
    """Seconds the server asks us to wait, or ``None`` when it says nothing usable.

    Reads ``retry-after-ms`` (OpenAI, Azure) first, then ``retry-after`` as seconds or
    as an HTTP-date relative to ``now_unix``. Header names are case-insensitive;
    garbage gives ``None``; a negative value or a date in the past gives ``0``.
    """
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        parsed = _seconds(millis.strip(), 0.001)
        if parsed is not None:
            return parsed
    value = _header(headers, "retry-after")
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    parsed = _seconds(value, 1.0)
    if parsed is not None:
        return parsed
    return _http_date(value, now_unix)
