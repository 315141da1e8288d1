"""The mock runtime's scripted behaviours, driven directly (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    RunnerContext,
    SamplingParams,
    SessionRebuildCause,
)
from atomr_infer_core.config import structure
from atomr_infer_core.errors import CircuitOpenError, RateLimitedError, ServerError
from atomr_infer_testkit import MockConfig, MockReplicaCrash, MockRunner, mock_runtime_plugin

DEP = Deployment(name="m", model="mock-small", runtime="mock")


def batch(**kw: Any) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=kw.pop("request_id", "r"), model="m", kind="completion", prompt="abcd", **kw
    )


async def collect(runner: MockRunner, b: ExecuteBatch) -> list[Any]:
    async with runner.execute(b) as chunks:
        return [c async for c in chunks]


async def running(config: MockConfig, nursery: trio.Nursery) -> MockRunner:
    runner = MockRunner(DEP, config, RunnerContext())
    await nursery.start(runner.run)
    return runner


def test_config_structures_from_a_toml_table() -> None:
    cfg = structure(
        {
            "chunks": ["a", "b"],
            "chunk_delay": "250ms",
            "fail_first": 2,
            "fail_with": "rate_limited",
        },
        MockConfig,
    )
    assert cfg == MockConfig(
        chunks=("a", "b"), chunk_delay=0.25, fail_first=2, fail_with="rate_limited"
    )


async def test_scripted_chunks_usage_and_max_tokens(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        runner = await running(MockConfig(chunks=("a", "b", "c"), chunk_delay=0.5), nursery)
        chunks = await collect(runner, batch())
        assert [c.text_delta for c in chunks] == ["a", "b", "c", ""]
        assert chunks[-1].finish_reason == "stop"
        assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (1, 3)
        assert trio.current_time() == 1.5
        cut = await collect(runner, batch(sampling=SamplingParams(max_tokens=2)))
        assert [c.text_delta for c in cut] == ["a", "b", ""]
        assert cut[-1].finish_reason == "length"
        assert runner.counters.executions == runner.counters.completions == 2
        nursery.cancel_scope.cancel()


async def test_fail_first_n_calls_with_any_error_kind() -> None:
    async with trio.open_nursery() as nursery:
        runner = await running(MockConfig(fail_with="circuit_open", fail_first=2), nursery)
        for _ in range(2):
            with pytest.raises(CircuitOpenError):
                await collect(runner, batch())
        assert "".join(c.text_delta for c in await collect(runner, batch())) == "Hello, world!"
        assert (runner.counters.calls, runner.counters.failures, runner.counters.executions) == (
            3,
            2,
            1,
        )
        nursery.cancel_scope.cancel()


async def test_fail_after_chunks() -> None:
    async with trio.open_nursery() as nursery:
        runner = await running(MockConfig(fail_with="rate_limited", fail_after_chunks=1), nursery)
        got: list[str] = []
        with pytest.raises(RateLimitedError):
            async with runner.execute(batch()) as chunks:
                async for c in chunks:
                    got.append(c.text_delta)
        assert got == ["Hello"]
        nursery.cancel_scope.cancel()


async def test_leaving_early_counts_a_cancellation(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        runner = await running(MockConfig(chunk_delay=1.0), nursery)
        with trio.move_on_after(1.5):
            await collect(runner, batch())
        assert (runner.counters.executions, runner.counters.cancellations) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_crash_raises_from_run_and_rebuild_is_recorded() -> None:
    runner = MockRunner(DEP, MockConfig(), RunnerContext())
    with pytest.raises(ExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            runner.crash("boom")
    assert caught.group_contains(MockReplicaCrash, match="boom")
    assert not runner.running
    with pytest.raises(Exception, match="not running"):
        await collect(runner, batch())
    await runner.rebuild_session(SessionRebuildCause.REPLICA_RESTART)
    assert runner.counters.rebuilds == [SessionRebuildCause.REPLICA_RESTART]


async def test_crash_on_call_crashes_the_replica() -> None:
    runner = MockRunner(DEP, MockConfig(crash_on_call=1), RunnerContext())
    with pytest.raises(ExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await collect(runner, batch())
    assert caught.group_contains(MockReplicaCrash, match="crash_on_call")


def test_plugin_prices_and_patterns() -> None:
    plugin = mock_runtime_plugin()
    assert plugin.name == "mock"
    assert plugin.prices.lookup("mock-small").output_per_mtok == 2.0
    assert plugin.model_patterns == ("mock", "mock-*")
    assert plugin.package == "atomr-infer-testkit"


async def test_server_error_is_the_default_failure() -> None:
    async with trio.open_nursery() as nursery:
        runner = await running(MockConfig(fail_after_chunks=0), nursery)
        with pytest.raises(ServerError):
            await collect(runner, batch())
        nursery.cancel_scope.cancel()
