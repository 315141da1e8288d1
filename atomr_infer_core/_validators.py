"""attrs validators whose errors name the field, so config errors can name its path.

Each carries its bound as ``json_schema`` (``{"minimum": 1}``) for the config schema.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["FieldValueError", "at_least", "at_most", "between", "greater_than", "optional"]


class FieldValueError(ValueError):
    """A field's value is out of range. ``field`` is the attribute name."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def at_least(low: float) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value < low:
            raise FieldValueError(attr.name, f"must be >= {_fmt(low)} (got {_fmt(value)})")

    check.json_schema = {"minimum": low}  # type: ignore[attr-defined]
    return check


def at_most(high: float) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value > high:
            raise FieldValueError(attr.name, f"must be <= {_fmt(high)} (got {_fmt(value)})")

    check.json_schema = {"maximum": high}  # type: ignore[attr-defined]
    return check


def greater_than(low: float) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value <= low:
            raise FieldValueError(attr.name, f"must be > {_fmt(low)} (got {_fmt(value)})")

    check.json_schema = {"exclusiveMinimum": low}  # type: ignore[attr-defined]
    return check


def between(low: float, high: float) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if not low <= value <= high:
            raise FieldValueError(
                attr.name, f"must be between {_fmt(low)} and {_fmt(high)} (got {_fmt(value)})"
            )

    check.json_schema = {"minimum": low, "maximum": high}  # type: ignore[attr-defined]
    return check


def optional(check: Any) -> Any:
    def wrapped(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(inst, attr, value)

    wrapped.json_schema = getattr(check, "json_schema", {})  # type: ignore[attr-defined]
    return wrapped
