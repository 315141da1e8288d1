"""The gateway alone: serve_gateway over a minimal object honouring the Cluster contract
that calls one testkit MockRunner directly (no admission, routing or metrics).

Used by ``bench/gateway.py --backend direct`` to separate the HTTP layer's cost from
the cluster's. ``python bench/_direct_gateway.py PORT CHUNKS`` (port 0: any; prints the URL).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from atomr_infer_core import ClusterConfig, Config, Deployment, ExecuteBatch, RunnerContext
from atomr_infer_core.errors import NotFoundError
from atomr_infer_runtimes.gateway import serve_gateway
from atomr_infer_testkit import MockConfig, MockRunner


class _Status:
    def __init__(self, name: str) -> None:
        self.name, self.state, self.reason, self.runtime, self.model = (
            name,
            "serving",
            None,
            "mock",
            "mock",
        )


class DirectCluster:
    def __init__(self, port: int, chunks: int) -> None:
        dep = Deployment(name="bench", model="mock", runtime="mock")
        self.config = Config(cluster=ClusterConfig(bind=f"127.0.0.1:{port}"), deployments=(dep,))
        words = ("Hello", *(f" w{i}" for i in range(1, chunks)))
        self.runner = MockRunner(dep, MockConfig(chunks=words), RunnerContext())
        self.metrics = self

    def render(self) -> bytes:
        return b""

    def list(self) -> list[_Status]:
        return [_Status("bench")]

    def status(self) -> Any:
        class S:
            name, ready, deployments = "direct", True, self.list()

        return S()

    @asynccontextmanager
    async def execute(self, batch: ExecuteBatch) -> AsyncIterator[Any]:
        if batch.model != "bench":
            raise NotFoundError(f"no deployment {batch.model!r}", model=batch.model)
        async with self.runner.execute(batch) as chunks:
            yield chunks


async def main(port: int, chunks: int) -> None:
    cluster = DirectCluster(port, chunks)
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.runner.run)
        url = await nursery.start(serve_gateway, cluster)
        print(url, flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
