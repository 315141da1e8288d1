"""atomr-infer remote core: sans-IO state machines and their thin trio/httpx shells."""

from __future__ import annotations

__all__: list[str] = []
