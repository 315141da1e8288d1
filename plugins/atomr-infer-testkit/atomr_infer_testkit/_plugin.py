"""Entry point of the testkit plugin: registers the ``mock`` runtime."""

from __future__ import annotations
