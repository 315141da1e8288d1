"""attrs validators whose errors name the field, for plugins' config classes.

A config error then reads ``deployment[0].runtime_config.default_top_p: must be between
0.0 and 1.0 (got 3.0)``.
"""

from __future__ import annotations

from ._validators import (
    FieldValueError as FieldValueError,
    at_least as at_least,
    between as between,
    greater_than as greater_than,
    optional as optional,
)

__all__ = ["FieldValueError", "at_least", "between", "greater_than", "optional"]
