"""Does an answer satisfy the JSON a request asked for? Pure, no dependencies.

A cascade escalates on ``invalid_json`` when :func:`json_problem` finds one. The schema
check covers the JSON Schema keywords structured-output requests use (OpenAI's strict
subset and a little more): ``type`` (also a list), ``enum``, ``const``, ``properties``,
``required``, ``additionalProperties`` (false or a schema), ``items``, ``prefixItems``,
``minItems`` / ``maxItems``, ``minLength`` / ``maxLength``, ``pattern``,
``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum``, ``anyOf``,
``oneOf``, ``allOf``, ``not``, and local ``$ref`` (``#/$defs/…``, ``#/definitions/…``).
Other keywords (``format``, ``dependentSchemas``, …) are not checked: an answer they
would reject passes here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["json_problem", "schema_problem"]

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def json_problem(text: str, response_format: Mapping[str, Any] | None) -> str | None:
    """Why ``text`` fails the request's ``response_format`` (``None``: it passes, or the
    request asked for no JSON)."""
    kind = (response_format or {}).get("type")
    if kind not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"the answer is not JSON ({exc})"
    if kind == "json_object":
        return None if isinstance(value, dict) else "the answer is JSON but not an object"
    spec = (response_format or {}).get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        return None
    return schema_problem(value, schema)


def schema_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    """The first way ``value`` breaks ``schema`` (as ``"$.path: what"``), else ``None``."""
    return _check(value, schema, "$", schema)


def _check(value: Any, schema: Any, path: str, root: Mapping[str, Any]) -> str | None:
    if schema is False:
        return f"{path}: no value is allowed here"
    if not isinstance(schema, Mapping):
        return None  # true, or not a schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(ref, root)
        if target is not None and (problem := _check(value, target, path, root)):
            return problem
    for check in (_check_type, _check_values, _check_combinators, _check_bounds):
        problem = check(value, schema, path, root)
        if problem is not None:
            return problem
    if isinstance(value, dict):
        return _check_object(value, schema, path, root)
    if isinstance(value, list):
        return _check_array(value, schema, path, root)
    return None


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#"):
        return None  # remote refs are not followed
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _check_type(value: Any, schema: Mapping[str, Any], path: str, _root: Any) -> str | None:
    kind = schema.get("type")
    if kind is None:
        return None
    kinds = kind if isinstance(kind, list) else [kind]
    if any(_TYPES.get(k, lambda _v: True)(value) for k in kinds):
        return None
    return f"{path}: expected {' or '.join(map(str, kinds))}, got {_json_type(value)}"


def _check_values(value: Any, schema: Mapping[str, Any], path: str, _root: Any) -> str | None:
    if "const" in schema and not _same(value, schema["const"]):
        return f"{path}: must be {json.dumps(schema['const'])}"
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_same(value, e) for e in enum):
        return f"{path}: must be one of {json.dumps(enum)}"
    return None


def _check_combinators(
    value: Any, schema: Mapping[str, Any], path: str, root: Mapping[str, Any]
) -> str | None:
    for sub in schema.get("allOf") or ():
        if problem := _check(value, sub, path, root):
            return problem
    any_of = schema.get("anyOf")
    if any_of and all(_check(value, sub, path, root) for sub in any_of):
        return f"{path}: matches none of anyOf"
    one_of = schema.get("oneOf")
    if one_of:
        matched = sum(1 for sub in one_of if _check(value, sub, path, root) is None)
        if matched != 1:
            return f"{path}: matches {matched} of oneOf (exactly one must match)"
    if "not" in schema and _check(value, schema["not"], path, root) is None:
        return f"{path}: matches the schema under 'not'"
    return None


def _check_bounds(value: Any, schema: Mapping[str, Any], path: str, _root: Any) -> str | None:
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{path}: shorter than minLength {schema['minLength']}"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path}: longer than maxLength {schema['maxLength']}"
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            return f"{path}: does not match pattern {pattern!r}"
    if _TYPES["number"](value):
        for key, fails in (
            ("minimum", lambda v, b: v < b),
            ("maximum", lambda v, b: v > b),
            ("exclusiveMinimum", lambda v, b: v <= b),
            ("exclusiveMaximum", lambda v, b: v >= b),
        ):
            bound = schema.get(key)
            if _TYPES["number"](bound) and fails(value, bound):
                return f"{path}: {value} breaks {key} {bound}"
    return None


def _check_object(
    value: dict[str, Any], schema: Mapping[str, Any], path: str, root: Mapping[str, Any]
) -> str | None:
    for name in schema.get("required") or ():
        if name not in value:
            return f"{path}: required property {name!r} is missing"
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        where = f"{path}.{name}"
        if name in properties:
            problem = _check(item, properties[name], where, root)
        elif extra is False:
            problem = f"{path}: property {name!r} is not allowed"
        else:
            problem = _check(item, extra, where, root)
        if problem is not None:
            return problem
    return None


def _check_array(
    value: list[Any], schema: Mapping[str, Any], path: str, root: Mapping[str, Any]
) -> str | None:
    if len(value) < schema.get("minItems", 0):
        return f"{path}: fewer than minItems {schema['minItems']}"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{path}: more than maxItems {schema['maxItems']}"
    prefix = schema.get("prefixItems") or []
    items = schema.get("items", True)
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else items
        if problem := _check(item, sub, f"{path}[{i}]", root):
            return problem
    return None


def _same(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0, but true is not 1
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__
