"""A stand-in Cluster honouring the runtime layer's contract, backed by testkit MockRunners.

It routes ``batch.model`` to a deployment by name, enters the runner's RunHandle in the
caller's task, and records when each handle was left and whether by cancellation, so
tests can assert that a client disconnect reached the runner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from atomr_infer_core import (
    ClusterConfig,
    Config,
    Deployment,
    ExecuteBatch,
    RunnerContext,
    Secret,
    TokenChunk,
)
from atomr_infer_core.errors import NotFoundError
from atomr_infer_runtimes.gateway import open_gateway as serving
from atomr_infer_testkit import MockConfig, MockRunner


@attrs.frozen
class FakeStatus:
    name: str
    model: str
    runtime: str
    state: str = "serving"
    reason: str | None = None
    replicas: int = 1
    breaker: str = "closed"
    spend_usd: float = 0.0


@attrs.frozen
class FakeClusterStatus:
    name: str
    ready: bool
    deployments: tuple[FakeStatus, ...]


@attrs.define
class HandleRecord:
    request_id: str
    batch: ExecuteBatch
    entered_at: float
    exited_at: float | None = None
    cancelled: bool = False
    exited: trio.Event = attrs.Factory(trio.Event)


class _Routed:
    def __init__(
        self, inner: AsyncIterator[TokenChunk], deployment: str, bug_after: int | None = None
    ) -> None:
        self._inner = inner
        self.deployment = deployment
        self._left = bug_after

    def __aiter__(self) -> _Routed:
        return self

    async def __anext__(self) -> TokenChunk:
        if self._left is not None:
            if self._left == 0:
                raise RuntimeError("a bug in a runner")
            self._left -= 1
        return await self._inner.__anext__()


class _Metrics:
    def render(self) -> bytes:
        return b"# TYPE atomr_requests_total counter\natomr_requests_total 0\n"


class FakeCluster:
    def __init__(
        self,
        mocks: Mapping[str, MockConfig],
        *,
        errors: Mapping[str, Exception] | None = None,
        bug_after: Mapping[str, int] | None = None,
        api_keys: tuple[str, ...] = (),
        max_request_bytes: int = 4 * 1024 * 1024,
        states: Mapping[str, str] | None = None,
        runtimes: Mapping[str, str] | None = None,
    ) -> None:
        names = [*mocks, *(errors or {})]
        # the runtime a deployment claims (what the gateway checks features against);
        # every deployment still runs a MockRunner
        claimed = dict(runtimes or {})
        self.config = Config(
            cluster=ClusterConfig(
                bind="127.0.0.1:0",
                api_keys=tuple(Secret(k) for k in api_keys),
                max_request_bytes=max_request_bytes,
                shutdown_grace=5.0,
            ),
            deployments=tuple(
                Deployment(name=n, model="mock", runtime=claimed.get(n, "mock")) for n in names
            ),
        )
        self.runners = {
            name: MockRunner(self.config.deployment(name), cfg, RunnerContext())
            for name, cfg in mocks.items()
        }
        self.errors = dict(errors or {})
        self.bug_after = dict(bug_after or {})
        self.states = dict(states or {})
        self.records: list[HandleRecord] = []
        self.metrics = _Metrics()
        self.entered = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for runner in self.runners.values():
                await nursery.start(runner.run)
            task_status.started()

    @asynccontextmanager
    async def execute(self, batch: ExecuteBatch) -> AsyncIterator[_Routed]:
        if batch.model in self.errors:
            raise self.errors[batch.model]
        runner = self.runners.get(batch.model)
        if runner is None:
            raise NotFoundError(f"no deployment named {batch.model!r}", model=batch.model)
        record = HandleRecord(batch.request_id, batch, trio.current_time())
        self.records.append(record)
        self.entered.set()
        try:
            async with runner.execute(batch) as chunks:
                yield _Routed(chunks, batch.model, self.bug_after.get(batch.model))
        except trio.Cancelled:
            record.cancelled = True
            raise
        finally:
            record.exited_at = trio.current_time()
            record.exited.set()

    def _statuses(self) -> list[FakeStatus]:
        return [
            FakeStatus(
                name=d.name, model=d.model, runtime="mock", state=self.states.get(d.name, "serving")
            )
            for d in self.config.deployments
        ]

    def list(self) -> list[FakeStatus]:
        return self._statuses()

    def status(self) -> FakeClusterStatus:
        deps = tuple(self._statuses())
        return FakeClusterStatus("test", all(d.state == "serving" for d in deps), deps)


@asynccontextmanager
async def open_gateway(cluster: FakeCluster) -> AsyncIterator[str]:
    """Run ``cluster`` and a gateway on a free loopback port; yield its base URL.

    On exit the gateway shuts down gracefully (in-flight handlers finish), then the
    cluster is cancelled.
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        async with serving(cluster, port=0) as url:
            yield url
        nursery.cancel_scope.cancel()


@pytest.fixture
def default_cluster() -> FakeCluster:
    return FakeCluster(
        {
            "chat": MockConfig(chunks=("Hello", ",", " world", "!"), input_tokens=5),
            "slow": MockConfig(chunks=("a", "b", "c", "d", "e"), chunk_delay=0.05),
            "stuck": MockConfig(chunks=("never",), chunk_delay=3600),
            "midfail": MockConfig(chunks=("x", "y", "z"), fail_after_chunks=2),
        }
    )
