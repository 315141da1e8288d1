"""The OpenAI-compatible HTTP gateway (quart-trio on hypercorn's trio worker)."""

from __future__ import annotations

__all__: list[str] = []
