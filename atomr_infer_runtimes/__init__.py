"""atomr-infer runtimes: plugins, supervision, the Cluster, admission, metrics, gateway."""

from __future__ import annotations

from . import hookspecs as hookspecs
from ._admission import Admission as Admission, CapacityGate as CapacityGate
from ._budget import BudgetGuard as BudgetGuard
from ._cluster import (
    Cluster as Cluster,
    ClusterStatus as ClusterStatus,
    Execution as Execution,
    open_cluster as open_cluster,
)
from ._deployments import (
    DeploymentRuntime as DeploymentRuntime,
    DeploymentState as DeploymentState,
    DeploymentStatus as DeploymentStatus,
    ReplicaState as ReplicaState,
    ReplicaStatus as ReplicaStatus,
)
from ._metrics import ClusterMetrics as ClusterMetrics
from ._plugins import (
    LOAD_PLUGINS_ENV as LOAD_PLUGINS_ENV,
    PluginInfo as PluginInfo,
    PluginRegistry as PluginRegistry,
    package_for_runtime as package_for_runtime,
)
from ._rotation import RotationResult as RotationResult
from ._supervisor import (
    ChildState as ChildState,
    RestartPolicy as RestartPolicy,
    SupervisedChild as SupervisedChild,
    Supervisor as Supervisor,
)

__all__ = [
    "LOAD_PLUGINS_ENV",
    "Admission",
    "BudgetGuard",
    "CapacityGate",
    "ChildState",
    "Cluster",
    "ClusterMetrics",
    "ClusterStatus",
    "DeploymentRuntime",
    "DeploymentState",
    "DeploymentStatus",
    "Execution",
    "PluginInfo",
    "PluginRegistry",
    "ReplicaState",
    "ReplicaStatus",
    "RestartPolicy",
    "RotationResult",
    "SupervisedChild",
    "Supervisor",
    "hookspecs",
    "open_cluster",
    "package_for_runtime",
]
