"""The plugin manager: runtimes from entry points and from code, one registry per cluster.

Entry points of the group ``atomr_infer`` load one by one: a plugin whose import or hook
raises is recorded with its error and skipped, and the others still load. The
environment variable ``ATOMR_INFER_LOAD_PLUGINS`` limits which entry points load:
unset loads all, ``"a,b"`` loads those names (entry-point or distribution names), empty
loads none (the core test suite runs that way and passes plugins explicitly). A name that
matches no installed plugin is reported like a broken plugin (``plugins`` lists it, the
log warns), so a typo does not go unnoticed.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import pluggy

from atomr_infer_core import (
    Deployment,
    PriceTable,
    RuntimeKind,
    RuntimePlugin,
    register_model_patterns,
    unregister_model_patterns,
)
from atomr_infer_core.errors import ConfigError, RuntimeNotInstalledError

from . import hookspecs

__all__ = ["LOAD_PLUGINS_ENV", "PluginInfo", "PluginRegistry", "package_for_runtime"]

LOAD_PLUGINS_ENV = "ATOMR_INFER_LOAD_PLUGINS"

log = logging.getLogger("atomr_infer.plugins")

# Runtimes whose distribution is not named after them.
_PACKAGES: Mapping[str, str] = {"mock": "atomr-infer-testkit"}


def package_for_runtime(runtime: str) -> str:
    """The distribution to ``pip install`` for ``runtime``."""
    kind = RuntimeKind(runtime)
    return _PACKAGES.get(kind, kind.package)


@attrs.frozen(kw_only=True)
class PluginInfo:
    """One loaded (or broken) plugin, as ``python -m atomr_infer plugins`` lists it."""

    name: str
    version: str | None = None
    distribution: str | None = None
    runtimes: tuple[str, ...] = ()
    model_patterns: tuple[str, ...] = ()
    #: ``None`` when the plugin loaded; else what went wrong (``"ImportError: ..."``)
    error: str | None = None

    def __iter__(self) -> Iterator[Any]:
        # (name, version, distribution, model_patterns, error), as the CLI unpacks it
        return iter((self.name, self.version, self.distribution, self.model_patterns, self.error))


def _allowed_names() -> frozenset[str] | None:
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginRegistry:
    """The runtimes a cluster can run, by name, and the plugins they came from.

    Not thread-safe; owned by one cluster. :meth:`close` unregisters the model-name
    patterns the runtimes claimed, so an unloaded plugin no longer steers
    ``infer_runtime``.
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._runtimes: dict[RuntimeKind, RuntimePlugin] = {}
        self._infos: list[PluginInfo] = []
        self._patterns_registered: list[RuntimeKind] = []

    # -- loading -------------------------------------------------------------------

    def load_entry_points(
        self, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None
    ) -> None:
        """Load every entry point of the ``atomr_infer`` group, one by one.

        ``entry_points`` replaces discovery (tests pass their own). Honours
        ``ATOMR_INFER_LOAD_PLUGINS``. Never raises for a broken plugin: see :attr:`infos`.
        """
        allowed = _allowed_names()
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME)
        installed: list[str] = []
        matched: set[str] = set()
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            installed.append(ep.name)
            matched.update(n for n in (ep.name, dist_name) if n is not None)
            if allowed is not None and ep.name not in allowed and dist_name not in allowed:
                continue
            if any(info.name == ep.name for info in self._infos):
                continue  # the same plugin seen through two paths
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not stop the others
                self._broken(ep.name, version, dist_name, exc)
                continue
            self.register_module(module, name=ep.name, version=version, distribution=dist_name)
        for name in sorted((allowed or frozenset()) - matched):
            self._not_installed(name, installed)

    def register_module(
        self,
        module: object,
        *,
        name: str | None = None,
        version: str | None = None,
        distribution: str | None = None,
    ) -> PluginInfo:
        """Register a plugin object (a module with a ``register_runtimes`` hookimpl)."""
        name = name or getattr(module, "__name__", None) or repr(module)
        collected: list[RuntimePlugin] = []
        try:
            self._pm.register(module, name=name)
        except Exception as exc:  # bad hook signature, duplicate name
            return self._broken(name, version, distribution, exc)
        try:
            for impl in self._pm.hook.register_runtimes.get_hookimpls():
                if impl.plugin is module:
                    impl.function(register=collected.append)
            for runtime in collected:
                self._check_new(runtime)
        except Exception as exc:
            self._pm.unregister(module)
            return self._broken(name, version, distribution, exc)
        for runtime in collected:
            self._install(runtime)
        info = PluginInfo(
            name=name,
            version=version,
            distribution=distribution,
            runtimes=tuple(str(r.name) for r in collected),
            model_patterns=tuple(p for r in collected for p in r.model_patterns),
        )
        self._infos.append(info)
        return info

    def add_runtime(self, runtime: RuntimePlugin, *, name: str | None = None) -> PluginInfo:
        """Register one runtime directly (in-code registration for tests and embedding).

        A runtime of the same name registered in code replaces an entry-point one.
        """
        self._runtimes.pop(runtime.name, None)
        self._install(runtime)
        info = PluginInfo(
            name=name or f"{runtime.name} (in code)",
            distribution=runtime.package or None,
            runtimes=(str(runtime.name),),
            model_patterns=runtime.model_patterns,
        )
        self._infos.append(info)
        return info

    def add(self, plugin: RuntimePlugin | object) -> PluginInfo:
        """A :class:`RuntimePlugin` or a plugin module/object with hookimpls."""
        if isinstance(plugin, RuntimePlugin):
            return self.add_runtime(plugin)
        return self.register_module(plugin)

    def _check_new(self, runtime: RuntimePlugin) -> None:
        if not isinstance(runtime, RuntimePlugin):
            raise TypeError(f"register() takes a RuntimePlugin, got {type(runtime).__name__}")
        if runtime.name in self._runtimes:
            raise ValueError(f"runtime {str(runtime.name)!r} is already registered")

    def _install(self, runtime: RuntimePlugin) -> None:
        self._runtimes[runtime.name] = runtime
        if runtime.model_patterns:
            register_model_patterns(runtime.name, runtime.model_patterns)
            self._patterns_registered.append(runtime.name)

    def _broken(
        self, name: str, version: str | None, distribution: str | None, exc: BaseException
    ) -> PluginInfo:
        info = PluginInfo(
            name=name, version=version, distribution=distribution, error=_describe(exc)
        )
        log.warning("plugin %s failed to load and is skipped: %s", name, info.error)
        self._infos.append(info)
        return info

    def _not_installed(self, name: str, installed: Iterable[str]) -> None:
        known = ", ".join(sorted(set(installed))) or "none"
        error = (
            f"not installed ({LOAD_PLUGINS_ENV} names it, but no installed plugin has that "
            f"entry-point or distribution name; installed: {known})"
        )
        log.warning("plugin %s is %s", name, error)
        self._infos.append(PluginInfo(name=name, error=error))

    def close(self) -> None:
        """Unregister the model-name patterns this registry claimed."""
        for kind in self._patterns_registered:
            unregister_model_patterns(kind)
        self._patterns_registered.clear()

    # -- queries -------------------------------------------------------------------

    @property
    def infos(self) -> list[PluginInfo]:
        return list(self._infos)

    def __iter__(self) -> Iterator[PluginInfo]:
        return iter(list(self._infos))

    def __len__(self) -> int:
        return len(self._infos)

    @property
    def runtimes(self) -> Mapping[RuntimeKind, RuntimePlugin]:
        return dict(self._runtimes)

    def prices(self) -> PriceTable:
        """Every runtime's price table merged (later registrations win on a clash)."""
        table = PriceTable()
        for runtime in self._runtimes.values():
            table = table.merged(runtime.prices)
        return table

    def runtime_for(self, deployment: Deployment, *, path: str = "deployment") -> RuntimePlugin:
        """The plugin serving ``deployment``.

        Raises:
            RuntimeNotInstalledError: no installed plugin provides its runtime (the
                message has the ``pip install`` line).
            ConfigError: no runtime is named and none can be inferred from the model.
        """
        kind = deployment.runtime
        if kind is None:
            try:
                kind = deployment.effective_runtime()
            except ConfigError:
                raise ConfigError(
                    [
                        (
                            f"{path}.runtime",
                            f"cannot infer a runtime from model {deployment.model!r}; set "
                            f"runtime = one of {sorted(map(str, self._runtimes)) or ['...']}",
                        )
                    ]
                ) from None
        plugin = self._runtimes.get(kind)
        if plugin is None:
            raise RuntimeNotInstalledError(f"{path}.runtime", str(kind), package_for_runtime(kind))
        return plugin
