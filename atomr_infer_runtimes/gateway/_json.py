"""Strict JSON for request bodies: only what every upstream wire encoder can encode gets in.

Python's ``json.loads`` accepts more than the runners can send on: ``NaN`` and
``Infinity``, numbers that overflow to infinity (``1e999``), lone surrogates written as
``\\ud800`` escapes, and nesting deep enough to exhaust the interpreter's stack. Each of
those would fail later, inside a replica, while the request is encoded for the provider
(``json.dumps(..., allow_nan=False, ensure_ascii=False).encode()``). Here they are a
:class:`~atomr_infer_core.errors.BadRequestError` for that one request, with ``param``
naming where in the body the value sits.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from atomr_infer_core.errors import BadRequestError

__all__ = ["MAX_JSON_DEPTH", "loads_strict"]

#: arrays and objects nested deeper than this are refused (JSON Schemas stay far below)
MAX_JSON_DEPTH = 64

# a UTF-8 body can only carry a surrogate as a \uXXXX escape (the decoder rejects
# encoded surrogates), so bodies without such an escape skip the string walk
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad(message: str, param: str | None = None) -> BadRequestError:
    return BadRequestError(message, param=param)


def _reject_constant(name: str) -> Any:
    raise _bad(
        f"the request body contains {name}, which is not valid JSON; send finite numbers only"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _bad(f"the number {text[:40]} in the request body is out of range for a double")
    return value


#: one decoder for every request (``json.loads`` with hooks builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads_strict(raw: bytes) -> Any:
    """Decode ``raw`` as JSON a provider can be sent, or raise ``BadRequestError``."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        value = _DECODER.decode(text)
    except BadRequestError:
        raise
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(
            f"the request body is not valid JSON ({exc}); send a JSON object with "
            "Content-Type: application/json"
        ) from None
    surrogates = b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None
    # the number of opening brackets bounds the depth: most bodies need no walk at all
    if surrogates or raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        check_encodable(value, surrogates=surrogates)
    return value


def _too_deep(param: str | None = None) -> BadRequestError:
    return _bad(
        f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
        param,
    )


def _surrogate(param: str, *, key: bool = False) -> BadRequestError:
    where = f"the key '{param}'" if key else f"'{param or 'body'}'"
    return _bad(
        f"{where} contains a lone UTF-16 surrogate, which cannot be encoded as UTF-8; "
        "send valid Unicode text",
        param or None,
    )


class _Found(Exception):
    """A problem deep in the value; the path is collected while unwinding."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.path: list[str | int] = []


def _render(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def check_encodable(value: Any, *, surrogates: bool = True) -> None:
    """Raise ``BadRequestError`` when ``value`` nests too deep or holds a lone surrogate.

    Recursion stops at ``MAX_JSON_DEPTH``, so it never nears the interpreter's limit;
    ``surrogates=False`` skips the string checks when none can be present.
    """
    try:
        _walk(value, 0, surrogates)
    except _Found as found:
        found.path.reverse()
        param = _render(found.path)
        if found.kind == "depth":
            raise _too_deep(param or None) from None
        raise _surrogate(param, key=found.kind == "key") from None


def _walk(item: Any, depth: int, surrogates: bool) -> None:
    if isinstance(item, dict):
        children: Any = item.items()
    elif isinstance(item, list):
        children = enumerate(item)
    else:
        if surrogates and isinstance(item, str) and _SURROGATE.search(item):
            raise _Found("text")
        return
    if depth >= MAX_JSON_DEPTH:
        raise _Found("depth")
    for key, child in children:
        if surrogates and isinstance(key, str) and _SURROGATE.search(key):
            found = _Found("key")
            found.path.append(key)
            raise found
        if isinstance(child, dict | list) or (surrogates and isinstance(child, str)):
            try:
                _walk(child, depth + 1, surrogates)
            except _Found as found:
                found.path.append(key)
                raise
