"""atomr-infer testkit: mock runtime, runner contract suite, mock provider servers."""

from __future__ import annotations

__all__: list[str] = []
