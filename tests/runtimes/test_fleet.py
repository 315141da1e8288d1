"""Clusters sharing one real redis-server: each cluster is what one gateway process runs.

Real time: the Redis server's clock decides the windows; waits stay well under a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from atomr_infer_core import (
    Budget,
    BudgetAction,
    CapacityPolicy,
    Config,
    RateLimits,
    RequestKind,
    Secret,
    Serving,
    StateConfig,
    TenantKey,
)
from atomr_infer_core.errors import (
    BudgetExceededError,
    CapacityExhaustedError,
    RateLimitedError,
    StateUnavailableError,
)
from atomr_infer_runtimes import open_cluster

PROMPT = "x" * 40  # 10 input tokens by the estimate
WORST = (10 * 1 + 8 * 2) / 1e6  # mock prices, max_tokens = 8
REAL = (10 * 1 + 4 * 2) / 1e6  # the mock answers 4 tokens


def fleet_config(url: str, *deployments: Any, **state: Any) -> Config:
    return Config(
        state=StateConfig(backend="redis", url=Secret(url), **state), deployments=deployments
    )


@asynccontextmanager
async def clusters(config: Config, plugin: Any, n: int) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                open_cluster(config, plugins=[plugin], load_entry_points=False)
            )
            for _ in range(n)
        ]


async def _peak_streams(fleet: list[Any], n: int) -> int:
    """Run ``n`` streams over the fleet's clusters in turn; the most in flight at once."""
    in_flight = peak = 0

    async def ask(cluster: Any) -> None:
        nonlocal in_flight, peak
        async with cluster.stream("chat", prompt="q", timeout=20) as chunks:
            in_flight += 1
            peak = max(peak, in_flight)
            async for _ in chunks:
                pass
            in_flight -= 1

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(ask, fleet[i % len(fleet)])
    return peak


async def test_concurrency_cap_holds_across_three_processes(
    redis_server, mock_plugin, mock_deployment
) -> None:
    dep = mock_deployment(
        "chat",
        rate_limits=RateLimits(concurrent_requests=4),
        serving=Serving(max_concurrent=32, on_capacity_exhausted=CapacityPolicy.QUEUE),
        config={"chunks": ["a", "b", "c"], "chunk_delay": "20ms"},
    )
    async with clusters(fleet_config(redis_server.url, dep), mock_plugin, 3) as fleet:
        assert {c.status().state_scope for c in fleet} == {"fleet"}
        peak = await _peak_streams(fleet, 24)
        assert peak == 4


async def test_max_concurrent_holds_across_processes(
    redis_server, mock_plugin, mock_deployment
) -> None:
    dep = mock_deployment(
        "chat",
        serving=Serving(max_concurrent=2, on_capacity_exhausted=CapacityPolicy.QUEUE),
        config={"chunks": ["a", "b"], "chunk_delay": "20ms"},
    )
    async with clusters(fleet_config(redis_server.url, dep), mock_plugin, 3) as fleet:
        peak = await _peak_streams(fleet, 12)
        assert peak == 2


async def test_max_concurrent_rejects_across_processes(
    redis_server, mock_plugin, mock_deployment
) -> None:
    dep = mock_deployment(
        "chat",
        serving=Serving(max_concurrent=1, on_capacity_exhausted=CapacityPolicy.REJECT),
        config={"chunk_delay": "200ms"},
    )
    async with clusters(fleet_config(redis_server.url, dep), mock_plugin, 2) as (a, b):
        async with a.stream("chat", prompt="q") as chunks:
            await chunks.__anext__()
            with pytest.raises(CapacityExhaustedError, match="at capacity across the fleet"):
                await b.complete("chat", prompt="q")


async def test_rpm_holds_across_processes(redis_server, mock_plugin, mock_deployment) -> None:
    dep = mock_deployment(
        "chat",
        rate_limits=RateLimits(requests_per_minute=6),
        serving=Serving(on_capacity_exhausted=CapacityPolicy.REJECT),
    )
    async with clusters(fleet_config(redis_server.url, dep), mock_plugin, 3) as fleet:
        outcomes: list[str] = []

        async def ask(cluster: Any) -> None:
            try:
                await cluster.complete("chat", prompt="q")
                outcomes.append("ok")
            except RateLimitedError:
                outcomes.append("limited")

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(ask, fleet[i % 3])
        assert outcomes.count("ok") == 6
        assert outcomes.count("limited") == 24


async def test_budget_holds_across_processes_and_survives_a_restart(
    redis_server, mock_plugin, mock_deployment
) -> None:
    dep = mock_deployment(
        "chat",
        budget=Budget(max_spend_per_hour_usd=10.5 * WORST, on_exceeded=BudgetAction.REJECT),
        serving=Serving(max_concurrent=64),
        config={"chunk_delay": "50ms"},
    )
    config = fleet_config(redis_server.url, dep)
    async with clusters(config, mock_plugin, 3) as fleet:
        outcomes: list[str] = []

        async def ask(cluster: Any) -> None:
            try:
                await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
                outcomes.append("ok")
            except BudgetExceededError:
                outcomes.append("budget")

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(ask, fleet[i % 3])
        assert outcomes.count("ok") == 10
    # every process restarted: the 10 * REAL spent still counts, so 4 more fit
    async with clusters(config, mock_plugin, 1) as [cluster]:
        for _ in range(4):
            await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        with pytest.raises(BudgetExceededError):
            await cluster.complete("chat", prompt=PROMPT, max_tokens=8)


async def test_dead_redis_fails_requests_closed_with_a_typed_503_in_time(
    redis_server, mock_plugin, mock_deployment
) -> None:
    dep = mock_deployment("chat", rate_limits=RateLimits(requests_per_minute=100))
    async with clusters(fleet_config(redis_server.url, dep), mock_plugin, 1) as [cluster]:
        await cluster.complete("chat", prompt="q")
        redis_server.stop()
        start = trio.current_time()
        with pytest.raises(StateUnavailableError) as info:
            await cluster.complete("chat", prompt="q", timeout=5)
        assert trio.current_time() - start < 1.5
        assert info.value.http_status == 503 and info.value.deployment == "chat"
        cluster.metrics.render()
        assert cluster.metrics.sample("atomr_state_unavailable_calls_total") >= 1
        assert cluster.metrics.sample("atomr_state_available") == 0
        redis_server.start()
        assert (await cluster.complete("chat", prompt="q")).text == "Hello, world!"
        cluster.metrics.render()
        assert cluster.metrics.sample("atomr_state_available") == 1


async def test_dead_redis_fails_open_on_local_limits(
    redis_server, mock_plugin, mock_deployment
) -> None:
    dep = mock_deployment(
        "chat",
        rate_limits=RateLimits(requests_per_minute=2),
        serving=Serving(on_capacity_exhausted=CapacityPolicy.REJECT),
    )
    config = fleet_config(redis_server.url, dep, on_unavailable="fail_open")
    async with clusters(config, mock_plugin, 1) as [cluster]:
        redis_server.stop()
        for _ in range(2):
            assert (await cluster.complete("chat", prompt="q")).text == "Hello, world!"
        with pytest.raises(RateLimitedError):
            await cluster.complete("chat", prompt="q")


async def test_a_tenants_rpm_and_budget_hold_across_processes(
    redis_server, mock_plugin, mock_deployment
) -> None:
    dep = mock_deployment("chat")
    by_rate = TenantKey(
        name="team-a", key=Secret("sk-team-a"), rate_limits=RateLimits(requests_per_minute=4)
    )
    by_budget = TenantKey(
        name="team-b", key=Secret("sk-team-b"), budget=Budget(max_spend_per_hour_usd=2.5 * WORST)
    )
    config = attrs.evolve(fleet_config(redis_server.url, dep), keys=(by_rate, by_budget))
    async with clusters(config, mock_plugin, 2) as fleet:

        async def ask(cluster: Any, tenant: str) -> str:
            batch = cluster._batch(
                "chat", RequestKind.COMPLETION, prompt=PROMPT, sampling={"max_tokens": 8}
            )
            try:
                await cluster._collect(attrs.evolve(batch, tenant=tenant))
            except RateLimitedError:
                return "rpm"
            except BudgetExceededError:
                return "budget"
            return "ok"

        outcomes: dict[str, list[str]] = {"team-a": [], "team-b": []}
        for tenant in outcomes:
            for i in range(6):  # in turn, each settled (refunds are queued) before the next
                outcomes[tenant].append(await ask(fleet[i % 2], tenant))
                await fleet[i % 2].state.settled()
        # 4 requests a minute hold over both processes
        assert outcomes["team-a"] == ["ok"] * 4 + ["rpm"] * 2
        # the budget fits 2.5 worst cases; each settles to its real cost, so 3 pass and the
        # rest are refused in both processes
        assert outcomes["team-b"] == ["ok"] * 3 + ["budget"] * 3
        untenanted = await fleet[1].complete("chat", prompt=PROMPT, max_tokens=8)
        assert untenanted.cost_usd == pytest.approx(REAL)
