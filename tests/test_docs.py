"""Docs stay true: every config key is documented in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

import attrs

from atomr_infer_core import (
    ClusterConfig,
    Config,
    Deployment,
    Pipeline,
    StateConfig,
    TelemetryConfig,
)

DOC = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()


def _keys(cls: type) -> set[str]:
    keys = set()
    for field in attrs.fields(cls):
        keys.add(field.name)
        target = field.type
        if isinstance(target, type) and attrs.has(target) and target is not Config:
            keys |= _keys(target)
    return keys


def test_every_config_key_is_documented() -> None:
    keys = _keys(ClusterConfig) | _keys(StateConfig) | _keys(TelemetryConfig) | _keys(Deployment)
    keys |= _keys(Pipeline)
    missing = sorted(k for k in keys if f"`{k}`" not in DOC and f".{k}]" not in DOC)
    assert missing == []
