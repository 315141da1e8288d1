"""The key/value cache handed to and read back from a transformers causal LM, on every release
the plugin supports.

transformers 5.25 renamed the ``past_key_values`` argument and output field to ``cache`` (the
old name still works there, with a ``FutureWarning``, until 5.40); 4.57 knows only the old name.
The name is read once per model from its ``forward`` signature, never guessed per call.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_argument", "make_cache", "returned_layers"]


def cache_argument(model: Any) -> str:
    """The keyword ``model.forward`` takes its key/value cache under: ``cache`` or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def make_cache(pairs: list[tuple[Any, Any]]) -> Any:
    """A ``DynamicCache`` holding one ``(keys, values)`` pair per layer (empty: a fresh cache)."""
    from transformers import DynamicCache

    return DynamicCache(pairs) if pairs else DynamicCache()


def returned_layers(out: Any) -> Any:
    """The cache layers of a forward pass's output, read under the field name this release uses."""
    cache = out.get("cache")
    if cache is None:
        cache = out.get("past_key_values")
    return cache.layers
