"""Entry point of the testkit plugin: registers the ``mock`` runtime."""

from __future__ import annotations

from collections.abc import Callable

from atomr_infer_core import RuntimePlugin, hookimpl

from ._mock_runner import mock_runtime_plugin

__all__ = ["register_runtimes"]


@hookimpl
def register_runtimes(register: Callable[[RuntimePlugin], None]) -> None:
    register(mock_runtime_plugin())
