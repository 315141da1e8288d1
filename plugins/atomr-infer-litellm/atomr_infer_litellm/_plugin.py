"""Entry point of the litellm plugin: registers the ``litellm`` runtime."""

from __future__ import annotations

from ._runtime import register_runtimes as register_runtimes

__all__ = ["register_runtimes"]
