"""atomr-infer: a trio-native, multi-runtime LLM inference layer.

The core values and errors are re-exported here; the runtime names (``open_cluster``,
``Cluster``, ``RestartPolicy``, …) load on first use, so ``import atomr_infer`` (and the
CLI) stays light until a cluster is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atomr_infer_core import *  # noqa: F403
from atomr_infer_core import __all__ as _core_all

if TYPE_CHECKING:
    from atomr_infer_runtimes import (
        Cluster as Cluster,
        ClusterMetrics as ClusterMetrics,
        ClusterStatus as ClusterStatus,
        DeploymentStatus as DeploymentStatus,
        Execution as Execution,
        PluginInfo as PluginInfo,
        ReplicaStatus as ReplicaStatus,
        RestartPolicy as RestartPolicy,
        open_cluster as open_cluster,
    )

from atomr_infer_core import __version__ as __version__

_RUNTIME_NAMES = (
    "Cluster",
    "ClusterMetrics",
    "ClusterStatus",
    "DeploymentStatus",
    "Execution",
    "PluginInfo",
    "ReplicaStatus",
    "RestartPolicy",
    "open_cluster",
)

__all__ = [*_core_all, *_RUNTIME_NAMES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _RUNTIME_NAMES:
        import atomr_infer_runtimes

        value = getattr(atomr_infer_runtimes, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atomr_infer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_RUNTIME_NAMES))
