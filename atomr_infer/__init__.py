"""atomr-infer: a trio-native, multi-runtime LLM inference layer."""

from __future__ import annotations

from atomr_infer_core import *  # noqa: F403
from atomr_infer_core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = [*_core_all, "__version__"]
