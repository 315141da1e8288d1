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


def loads_strict(raw: bytes) -> Any:
    """Decode ``raw`` as JSON a provider can be sent, or raise ``BadRequestError``."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except BadRequestError:
        raise
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(
            f"the request body is not valid JSON ({exc}); send a JSON object with "
            "Content-Type: application/json"
        ) from None
    surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    # the number of opening brackets bounds the depth: most bodies need no walk at all
    if surrogates or raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        check_encodable(value, surrogates=surrogates)
    return value


def _too_deep(param: str | None = None) -> BadRequestError:
    return _bad(
        f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
        param,
    )


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def check_encodable(value: Any, *, surrogates: bool = True) -> None:
    """Raise ``BadRequestError`` when ``value`` nests too deep or holds a lone surrogate.

    Iterative (no recursion limit of its own); ``surrogates=False`` skips string checks
    when the caller knows none can be present.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if surrogates and _SURROGATE.search(item):
                raise _bad(
                    f"'{path or 'body'}' contains a lone UTF-16 surrogate, which cannot be "
                    "encoded as UTF-8; send valid Unicode text",
                    path or None,
                )
            continue
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            continue
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep(path or None)
        for key, child in children:
            where = _path(path, key)
            if surrogates and isinstance(key, str) and _SURROGATE.search(key):
                raise _bad(
                    f"the key '{where}' contains a lone UTF-16 surrogate, which cannot be "
                    "encoded as UTF-8; send valid Unicode text",
                    where,
                )
            stack.append((child, where, depth + 1))
