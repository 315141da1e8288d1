"""Budgets: reserve worst case before dispatch, settle after; reject, warn, throttle."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from atomr_infer_core import Budget, BudgetAction, Serving
from atomr_infer_core.errors import BudgetExceededError
from atomr_infer_runtimes import open_cluster

PROMPT = "x" * 40  # 10 input tokens by the estimate
# mock prices: $1 / Mtok in, $2 / Mtok out
WORST = (10 * 1 + 8 * 2) / 1e6  # max_tokens = 8
REAL = (10 * 1 + 4 * 2) / 1e6  # the mock answers 4 tokens


def budgeted(mock_deployment: Any, action: BudgetAction, per_hour: float, **kw: Any) -> Any:
    return mock_deployment(
        "chat",
        budget=Budget(max_spend_per_hour_usd=per_hour, on_exceeded=action),
        config=kw.pop("config", {"chunk_delay": "100ms"}),
        **kw,
    )


def cluster_of(mock_plugin: Any, *deployments: Any) -> Any:
    return open_cluster(list(deployments), plugins=[mock_plugin], load_entry_points=False)


async def test_fifty_concurrent_requests_never_overrun_a_budget_that_fits_ten(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    limit = 10.5 * WORST
    dep = budgeted(mock_deployment, BudgetAction.REJECT, limit, serving=Serving(max_concurrent=64))
    async with cluster_of(mock_plugin, dep) as cluster:
        outcomes: list[str] = []

        async def ask() -> None:
            try:
                reply = await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
                assert reply.cost_usd == pytest.approx(REAL)
                outcomes.append("ok")
            except BudgetExceededError:
                outcomes.append("budget")

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(ask)
        assert outcomes.count("ok") == 10
        assert outcomes.count("budget") == 40
        assert runners.of("chat")[0].counters.executions == 10
        [status] = cluster.list()
        assert status.spend_hour_usd == pytest.approx(10 * REAL)
        assert status.spend_hour_usd <= limit
        # settling released the unused worst cases: one at a time, 4 more fit
        for _ in range(4):
            await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        with pytest.raises(BudgetExceededError):
            await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        assert cluster.list()[0].spend_hour_usd == pytest.approx(14 * REAL)
        assert cluster.list()[0].spend_hour_usd <= limit


async def test_reject_says_when_the_window_has_room(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    dep = budgeted(mock_deployment, BudgetAction.REJECT, 1.5 * WORST)
    async with cluster_of(mock_plugin, dep) as cluster:
        await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        await trio.sleep(100)
        with pytest.raises(BudgetExceededError) as caught:
            await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        error = caught.value
        assert error.deployment == "chat"
        assert error.http_status == 429 and error.code == "insufficient_quota"
        # the first request's spend (at t=0) leaves the hour window at t=3600
        assert error.retry_after == pytest.approx(3600 - trio.current_time())
        assert "per hour" in error.message and "max_spend_per_hour_usd" in error.message
        await trio.sleep(error.retry_after)
        assert (await cluster.complete("chat", prompt=PROMPT, max_tokens=8)).text == "Hello, world!"


async def test_failed_request_releases_its_reservation(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    dep = budgeted(
        mock_deployment, BudgetAction.REJECT, 1.5 * WORST, config={"fail_with": "server_error"}
    )
    async with cluster_of(mock_plugin, dep) as cluster:
        for _ in range(5):
            with pytest.raises(Exception, match="server_error"):
                await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        assert cluster.list()[0].spend_hour_usd == 0


async def test_warn_admits_and_warns_once_per_window(
    mock_plugin, mock_deployment, caplog, autojump_clock
) -> None:
    dep = budgeted(mock_deployment, BudgetAction.WARN, 2 * REAL, config={})
    async with cluster_of(mock_plugin, dep) as cluster:
        with caplog.at_level(logging.WARNING, logger="atomr_infer.budget"):
            for _ in range(5):
                await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        warnings = [r for r in caplog.records if "budget per hour" in r.getMessage()]
        assert len(warnings) == 1
        assert cluster.list()[0].spend_hour_usd == pytest.approx(5 * REAL)
        labels = {"deployment": "chat", "window": "hour"}
        assert cluster.metrics.sample("atomr_budget_warnings_total", labels) == 1
        await trio.sleep(3600)
        for _ in range(3):
            await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        assert cluster.metrics.sample("atomr_budget_warnings_total", labels) == 2


async def test_throttle_halves_concurrency_until_the_window_has_room(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    dep = budgeted(
        mock_deployment, BudgetAction.THROTTLE, 2 * REAL, serving=Serving(max_concurrent=4)
    )
    async with cluster_of(mock_plugin, dep) as cluster:
        capacity = cluster.runtime("chat").admission.capacity
        assert capacity.limit == 4
        for _ in range(3):
            await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
        assert capacity.limit == 2
        peak = 0

        async def ask() -> None:
            nonlocal peak
            async with cluster.stream("chat", prompt=PROMPT, max_tokens=8) as chunks:
                async for _ in chunks:
                    peak = max(peak, capacity.in_use)

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(ask)
        assert peak == 2  # admitted, but two at a time
        await trio.sleep(3601)
        await cluster.runtime("chat").budget.refresh()
        assert capacity.limit == 4


TWENTY = {"chunks": ["tok "] * 20, "chunk_delay": "1s"}  # one token a chunk


async def test_an_abandoned_stream_is_charged_for_what_it_produced(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    dep = budgeted(mock_deployment, BudgetAction.REJECT, 1.0, config=TWENTY)
    async with cluster_of(mock_plugin, dep) as cluster:
        for _ in range(3):
            async with cluster.stream("chat", prompt=PROMPT, max_tokens=20) as chunks:
                seen = 0
                async for _ in chunks:
                    seen += 1
                    if seen == 5:
                        break
            assert chunks.usage is None  # the usage chunk never came
            assert chunks.cost_usd == pytest.approx((10 * 1 + 5 * 2) / 1e6)
        assert cluster.list()[0].spend_hour_usd == pytest.approx(3 * (10 * 1 + 5 * 2) / 1e6)


async def test_a_stream_the_upstream_cuts_is_charged_for_what_it_produced(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    config = {**TWENTY, "fail_with": "server_error", "fail_after_chunks": 3}
    dep = budgeted(mock_deployment, BudgetAction.REJECT, 1.0, config=config)
    async with cluster_of(mock_plugin, dep) as cluster:
        with pytest.raises(Exception, match="server_error"):
            async with cluster.stream("chat", prompt=PROMPT, max_tokens=20) as chunks:
                async for _ in chunks:
                    pass
        assert cluster.list()[0].spend_hour_usd == pytest.approx((10 * 1 + 3 * 2) / 1e6)
