"""The hooks a plugin may implement (entry-point group ``atomr_infer``).

A plugin is one module::

    from atomr_infer_core import RuntimePlugin, hookimpl

    @hookimpl
    def register_runtimes(register):
        register(RuntimePlugin(name="mine", config_class=MyConfig, create=make_runner))

and one entry point in its ``pyproject.toml``::

    [project.entry-points.atomr_infer]
    mine = "atomr_infer_mine._plugin"
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from atomr_infer_core import RuntimePlugin, hookimpl

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "register_runtimes"]

#: the pluggy project name and the entry-point group
PROJECT_NAME = "atomr_infer"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_runtimes(register: Callable[[RuntimePlugin], None]) -> None:
    """Call ``register(RuntimePlugin(...))`` once for each runtime the plugin provides.

    Called once per plugin when the plugin manager loads it. Raising here marks the
    plugin broken (it is listed with the error) and the other plugins still load.
    """
