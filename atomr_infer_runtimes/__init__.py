"""atomr-infer runtimes: plugins, supervision, the Cluster, admission, metrics, gateway."""

from __future__ import annotations

__all__: list[str] = []
