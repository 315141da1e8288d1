"""Deterministic JSON that satisfies a (simple) JSON Schema: how the mock providers
honour structured-output requests, so a test can tell a schema that reached the
provider from one that was dropped on the way.

``schema_answer(schema, text)`` builds an instance: strings are ``text`` (or the first
``enum`` value), integers the number of words in ``text``, numbers that as a float,
booleans ``true``, arrays one item, objects every declared property. ``anyOf`` and
``oneOf`` take their first branch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["schema_answer", "schema_instance"]


def schema_instance(schema: Any, text: str) -> Any:
    """One value valid against ``schema`` (see the module docstring)."""
    if not isinstance(schema, Mapping):
        return text
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], text)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: schema_instance(sub, text) for name, sub in properties.items()}
    if kind == "array":
        return [schema_instance(schema.get("items") or {}, text)]
    if kind == "integer":
        return len(text.split())
    if kind == "number":
        return float(len(text.split()))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def schema_answer(schema: Any, text: str) -> str:
    """The JSON text a mock model answers with when asked for ``schema``."""
    return json.dumps(schema_instance(schema, text))
