"""Metrics per cluster, request-id logging, and the rate-limit step of admission."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from atomr_infer_core import CapacityPolicy, RateLimits, Serving, Timeouts
from atomr_infer_core.errors import RateLimitedError, ServerError
from atomr_infer_runtimes import open_cluster

HELLO = [{"role": "user", "content": "hello"}]


def cluster_of(mock_plugin: Any, *deployments: Any) -> Any:
    return open_cluster(list(deployments), plugins=[mock_plugin], load_entry_points=False)


async def test_metrics_count_requests_latency_tokens_and_cost(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    ok = mock_deployment("ok", config={"chunk_delay": "250ms"})
    bad = mock_deployment("bad", config={"fail_with": "server_error"})
    async with cluster_of(mock_plugin, ok, bad) as cluster:
        for _ in range(2):
            await cluster.complete("ok", messages=HELLO)
        with pytest.raises(ServerError):
            await cluster.complete("bad", messages=HELLO)
        m = cluster.metrics
        assert (
            m.sample("atomr_requests_total", {"deployment": "ok", "status": "ok", "error_kind": ""})
            == 2
        )
        assert (
            m.sample(
                "atomr_requests_total",
                {"deployment": "bad", "status": "error", "error_kind": "server_error"},
            )
            == 1
        )
        assert m.sample("atomr_time_to_first_token_seconds_count", {"deployment": "ok"}) == 2
        assert m.sample(
            "atomr_time_to_first_token_seconds_sum", {"deployment": "ok"}
        ) == pytest.approx(0.5)
        assert m.sample(
            "atomr_request_duration_seconds_sum", {"deployment": "ok"}
        ) == pytest.approx(2.0)
        assert m.sample("atomr_tokens_in_total", {"deployment": "ok"}) == 4
        assert m.sample("atomr_tokens_out_total", {"deployment": "ok"}) == 8
        assert m.sample("atomr_cost_usd_total", {"deployment": "ok"}) == pytest.approx(
            2 * (2 + 8) / 1e6
        )
        text = m.render().decode()
        assert 'atomr_breaker_state{deployment="ok"} 0.0' in text
        assert 'atomr_in_flight{deployment="ok"} 0.0' in text
        assert 'atomr_deployment_serving{deployment="ok"} 1.0' in text


async def test_each_cluster_has_its_own_registry(mock_plugin, mock_deployment) -> None:
    async with (
        cluster_of(mock_plugin, mock_deployment("a")) as one,
        cluster_of(mock_plugin, mock_deployment("a")) as two,
    ):
        await one.complete("a", messages=HELLO)
        assert one.metrics.registry is not two.metrics.registry
        labels = {"deployment": "a", "status": "ok", "error_kind": ""}
        assert one.metrics.sample("atomr_requests_total", labels) == 1
        assert two.metrics.sample("atomr_requests_total", labels) == 0


async def test_breaker_state_gauge_follows_the_breaker(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("a")) as cluster:
        cluster.breaker("a").force_open(10)
        assert 'atomr_breaker_state{deployment="a"} 2.0' in cluster.metrics.render().decode()


async def test_every_log_line_of_a_request_has_its_id_and_no_secret(
    mock_plugin, mock_deployment, caplog
) -> None:
    primary = mock_deployment(
        "chat",
        fallbacks=["backup"],
        config={"fail_with": "server_error", "fail_message": "upstream said 500"},
    )
    backup = mock_deployment("backup")
    # prompts are never logged, so a key pasted into one does not leak into logs
    async with cluster_of(mock_plugin, primary, backup) as cluster:
        with caplog.at_level(logging.DEBUG, logger="atomr_infer"):
            await cluster.complete(
                "chat",
                messages=[{"role": "user", "content": "sk-very-secret"}],
                request_id="req-42",
            )
    lines = [r for r in caplog.records if r.name == "atomr_infer.cluster"]
    assert lines, "the fallback must be logged"
    assert all(r.getMessage().startswith("[request_id=req-42") for r in lines)
    assert all(getattr(r, "request_id", None) == "req-42" for r in lines)
    assert "sk-very-secret" not in caplog.text


async def test_rate_limit_waits_for_a_permit_under_queue_policy(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    dep = mock_deployment(
        "chat",
        rate_limits=RateLimits(requests_per_minute=2),
        timeouts=Timeouts(request_timeout=120),
    )
    async with cluster_of(mock_plugin, dep) as cluster:
        for _ in range(3):
            await cluster.complete("chat", messages=HELLO)
        # the third request waited for the rolling minute to free a request
        assert trio.current_time() == pytest.approx(60.0)
        assert (
            cluster.metrics.sample("atomr_rate_limit_wait_seconds_count", {"deployment": "chat"})
            == 1
        )


async def test_rate_limit_rejects_under_reject_policy_and_falls_back(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    limited = RateLimits(requests_per_minute=1)
    reject = mock_deployment(
        "r", rate_limits=limited, serving=Serving(on_capacity_exhausted=CapacityPolicy.REJECT)
    )
    primary = mock_deployment(
        "chat",
        rate_limits=limited,
        fallbacks=["backup"],
        serving=Serving(on_capacity_exhausted=CapacityPolicy.FALLBACK),
    )
    backup = mock_deployment("backup")
    async with cluster_of(mock_plugin, reject, primary, backup) as cluster:
        await cluster.complete("r", messages=HELLO)
        with pytest.raises(RateLimitedError) as caught:
            await cluster.complete("r", messages=HELLO)
        assert caught.value.deployment == "r"
        assert trio.current_time() == 0
        assert (await cluster.complete("chat", messages=HELLO)).deployment == "chat"
        assert (await cluster.complete("chat", messages=HELLO)).deployment == "backup"
