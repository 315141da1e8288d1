"""atomr-infer runtime for Google Gemini (``gemini-*``): AI Studio and Vertex AI."""

from __future__ import annotations

from ._prices import PRICES as PRICES

__all__ = ["PRICES"]
