"""The JSON Schema of the config file, generated from the attrs classes that load it.

``python -m atomr_infer schema`` prints it; ``docs/atomr.schema.json`` is its committed
copy (a test keeps the two equal). It is what an editor needs for completion and
checking: every table and key, types, bounds, enum values and defaults, descriptions from
the ``#:`` comments above the fields. The loader stays the authority: it also checks what
a schema cannot (fallbacks naming existing deployments, ``runtime_config`` against the
runtime plugin's own class), and ``${VAR}`` strings are interpolated before the types are
checked, so a string holding ``${VAR}`` is accepted wherever the schema asks for text.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from . import _deployment
from ._deployment import Config, Quantile, Seconds
from ._kinds import RuntimeKind
from ._secret import Secret

__all__ = ["config_schema"]

_DURATION_PATTERN = r"^\s*\d+(\.\d*)?([eE][-+]?\d+)?\s*(ms|s|m|h)\s*$"
_RENAMED: dict[tuple[type, str], str] = {
    (Config, "deployments"): "deployment",
    (Config, "keys"): "key",
    (Config, "pipelines"): "pipeline",
}
_COMMENT = re.compile(r"^\s*#:\s?(.*)$")
_FIELD = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*:")


def _class_source(cls: type) -> list[str]:
    """The source lines of ``cls``'s body in :mod:`._deployment` (the package re-exports
    the classes under its own name, which ``inspect.getsource(cls)`` would look in)."""
    lines = inspect.getsource(_deployment).splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if re.match(rf"class {cls.__name__}\b", ln)), None
    )
    if start is None:
        return []
    body = []
    for line in lines[start + 1 :]:
        if line and not line[0].isspace():
            break
        body.append(line)
    return body


def _field_comments(cls: type) -> dict[str, str]:
    """``#:`` comment lines directly above each field of ``cls``."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in _class_source(cls):
        comment = _COMMENT.match(line)
        if comment:
            pending.append(comment.group(1).strip())
            continue
        field = _FIELD.match(line)
        if field and pending:
            found[field.group(1)] = " ".join(pending)
        pending = []
    return found


def _duration() -> dict[str, Any]:
    return {
        "description": 'a duration: "250ms", "30s", "5m", "1h", or integer milliseconds',
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": _DURATION_PATTERN},
        ],
    }


def _runtime() -> dict[str, Any]:
    return {
        "description": "a runtime name (an installed plugin's), or the original's "
        '{ custom = "…" } / { python = "…" } form',
        "anyOf": [
            {
                "type": "string",
                "examples": sorted(
                    v for k, v in vars(RuntimeKind).items() if k.isupper() and isinstance(v, str)
                ),
            },
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {"custom": {"type": "string"}, "python": {"type": "string"}},
                "additionalProperties": False,
            },
        ],
    }


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if tp is Seconds:
        return _duration()
    if tp is RuntimeKind:
        return _runtime()
    if tp is Quantile:
        return {
            "type": "string",
            "pattern": "^p[1-9][0-9]?$",
            "description": 'a quantile of an observed distribution: "p95"',
        }
    if tp is Secret:
        return {"type": "string", "description": "a secret: never logged; use ${VAR}"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is Any:
        return {}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type) and attrs.has(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # recursion guard; filled below
            defs[name] = _class_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _type_schema(options[0], defs)  # TOML has no null: optional means omit
        return {"anyOf": [_type_schema(a, defs) for a in options]}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin in (Mapping, dict, typing.Mapping) or tp in (Mapping, dict):
        return {"type": "object"}
    raise TypeError(f"no JSON Schema mapping for config type {tp!r}")


def _default(field: attrs.Attribute[Any], tp: Any) -> Any:
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if attrs.has(typing.cast(Any, default).factory):
            return None
        default = default.factory()  # type: ignore[union-attr]
    if default is None or default is attrs.NOTHING:
        return None
    if tp is Seconds:
        return f"{default:g}s"
    if isinstance(default, enum.Enum):
        return default.value
    if isinstance(default, tuple):
        return list(default)
    if isinstance(default, dict) and not default:
        return None
    return default


def _class_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    # the package re-exports these classes under its own name, so resolve the annotations
    # in the module that wrote them
    hints = typing.get_type_hints(cls, globalns=vars(_deployment))
    comments = _field_comments(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        key = _RENAMED.get((cls, field.name), field.name)
        tp = hints[field.name]
        schema = dict(_type_schema(tp, defs))
        bounds = getattr(field.validator, "json_schema", {})
        if tp is Seconds and bounds:  # bounds are seconds; the integer form is milliseconds
            integer = {"type": "integer", **{k: v * 1000 for k, v in bounds.items()}}
            schema["anyOf"] = [integer, schema["anyOf"][1]]
        else:
            schema.update(bounds)
        if field.name in comments:
            generic = schema.get("description")
            text = comments[field.name]
            schema["description"] = f"{text} ({generic})" if generic else text
        default = _default(field, tp)
        if default is not None:
            schema["default"] = default
        if field.default is attrs.NOTHING:
            required.append(key)
        properties[key] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    doc = inspect.getdoc(cls)
    if doc and cls.__module__.startswith("atomr_infer"):
        out["description"] = doc.split("\n\n", 1)[0].replace("\n", " ")
    return out


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a project file, as a JSON-able dict."""
    defs: dict[str, Any] = {}
    root = _class_schema(Config, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "atomr-infer project file",
        **root,
        "$defs": dict(sorted(defs.items())),
    }
