"""Fixtures for the runtime layer: the mock runtime with its runners kept for inspection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from atomr_infer_core import Deployment, RuntimePlugin
from atomr_infer_runtimes import RestartPolicy
from atomr_infer_testkit import MockRunner, mock_runtime_plugin


class Runners:
    """Every MockRunner the cluster built, by (deployment, replica index)."""

    def __init__(self) -> None:
        self.all: list[MockRunner] = []

    def add(self, runner: MockRunner) -> None:
        self.all.append(runner)

    def of(self, deployment: str) -> list[MockRunner]:
        """The newest runner of each replica of ``deployment``, by replica index."""
        latest: dict[int, MockRunner] = {}
        for runner in self.all:
            if runner.deployment.name == deployment:
                latest[runner.replica_index] = runner
        return [latest[i] for i in sorted(latest)]


@pytest.fixture
def runners() -> Runners:
    return Runners()


@pytest.fixture
def mock_plugin(runners: Runners) -> RuntimePlugin:
    return mock_runtime_plugin(on_create=runners.add)


@pytest.fixture
def mock_deployment() -> Callable[..., Deployment]:
    def make(name: str = "chat", **kw: Any) -> Deployment:
        config = kw.pop("config", {})
        return Deployment(
            name=name,
            model=kw.pop("model", "mock-small"),
            runtime="mock",
            runtime_config=config,
            **kw,
        )

    return make


FAST_RESTARTS = RestartPolicy(max_restarts=3, period=60.0, initial_backoff=1.0, max_backoff=8.0)
