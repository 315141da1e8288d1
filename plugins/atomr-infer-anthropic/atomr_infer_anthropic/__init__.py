"""atomr-infer runtime for Anthropic's Messages API (``claude-*`` models)."""

from __future__ import annotations

from ._prices import PRICES as PRICES

__all__ = ["PRICES"]
