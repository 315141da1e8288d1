"""The Cluster: routing, replicas under supervision, fallbacks, hot deploy, cancellation."""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from atomr_infer_core import (
    CapacityPolicy,
    ExecuteBatch,
    Priority,
    Serving,
    SessionRebuildCause,
    Timeouts,
)
from atomr_infer_core.errors import (
    CapacityExhaustedError,
    CircuitOpenError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    SessionPoisonedError,
)
from atomr_infer_runtimes import open_cluster

from .conftest import FAST_RESTARTS

HELLO = [{"role": "user", "content": "hello"}]


def cluster_of(mock_plugin: Any, *deployments: Any, **kw: Any) -> Any:
    return open_cluster(
        list(deployments),
        plugins=[mock_plugin],
        load_entry_points=False,
        restart_policy=kw.pop("restart_policy", FAST_RESTARTS),
        **kw,
    )


async def test_complete_records_deployment_cost_and_usage(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("chat")) as cluster:
        reply = await cluster.complete("chat", messages=HELLO, max_tokens=3)
        assert reply.text == "Hello, world"
        assert reply.finish_reason == "length"
        assert reply.deployment == "chat"
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (2, 3)
        # mock prices: $1 / Mtok in, $2 / Mtok out
        assert reply.cost_usd == pytest.approx((2 * 1 + 3 * 2) / 1e6)
        # by the model it serves, too
        assert (await cluster.complete("mock-small", prompt="x")).deployment == "chat"


async def test_stream_exposes_the_deployment(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("chat")) as cluster:
        handle = cluster.stream("chat", messages=HELLO)
        assert handle.deployment is None
        async with handle as chunks:
            assert chunks.deployment == "chat"
            texts = [c.text_delta async for c in chunks]
        assert "".join(texts) == "Hello, world!"


async def test_embed(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("emb")) as cluster:
        reply = await cluster.embed("emb", ["a", "b", "c"], dimensions=4)
        assert len(reply.embeddings) == 3
        assert all(len(v) == 4 for v in reply.embeddings)
        assert reply.deployment == "emb"


async def test_unknown_model_is_not_found(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("chat")) as cluster:
        with pytest.raises(NotFoundError, match="no deployment named 'gpt-9'"):
            await cluster.complete("gpt-9", messages=HELLO)


async def test_ambiguous_model_asks_for_a_deployment_name(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("a"), mock_deployment("b")) as cluster:
        with pytest.raises(NotFoundError, match=r"served by several deployments \(a, b\)"):
            await cluster.complete("mock-small", messages=HELLO)


# -- supervision ---------------------------------------------------------------------


async def test_crashed_replica_fails_in_flight_rebuilds_and_rejoins(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    dep = mock_deployment("chat", replicas=2, config={"chunk_delay": "10ms"})
    async with cluster_of(mock_plugin, dep) as cluster:
        r0, r1 = runners.of("chat")
        seen: list[str] = []
        async with cluster.stream("chat", messages=HELLO) as chunks:
            owner = r0 if r0.counters.calls else r1
            async for chunk in chunks:
                seen.append(chunk.text_delta)
                if len(seen) == 1:
                    with pytest.raises(SessionPoisonedError, match="crashed"):
                        owner.crash("GPU fell off the bus")
                        async for _ in chunks:
                            pass
                    break
        assert seen == ["Hello"]
        [status] = cluster.list()
        down = status.replicas[owner.replica_index]
        assert (down.state, down.restarts) == ("down", 1)
        # while it is down every request goes to its sibling
        sibling = r1 if owner is r0 else r0
        before = sibling.counters.executions
        for _ in range(3):
            assert (await cluster.complete("chat", messages=HELLO)).text == "Hello, world!"
        assert sibling.counters.executions == before + 3
        await trio.sleep(10)  # past the 1 s backoff
        assert owner.counters.rebuilds == [SessionRebuildCause.REPLICA_RESTART]
        assert owner.counters.starts == 2
        assert cluster.list()[0].replicas[owner.replica_index].state == "serving"
        before = owner.counters.executions
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(partial(cluster.complete, "chat", prompt="x"))
        assert owner.counters.executions == before + 2
        assert cluster.metrics.sample("atomr_replica_restarts_total", {"deployment": "chat"}) == 1


async def test_crash_before_output_is_rerouted_to_a_sibling(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    dep = mock_deployment("chat", replicas=2, config={"chunk_delay": "1s"})
    async with cluster_of(mock_plugin, dep) as cluster:
        r0, r1 = runners.of("chat")
        async with trio.open_nursery() as nursery:

            async def crash_first_owner() -> None:
                await trio.sleep(0.5)  # dispatched, no chunk yet
                (r0 if r0.counters.calls else r1).crash()

            nursery.start_soon(crash_first_owner)
            reply = await cluster.complete("chat", messages=HELLO)
        assert reply.text == "Hello, world!"
        assert trio.current_time() == pytest.approx(4.5)
        assert (r0.counters.calls, r1.counters.calls) == (1, 1)
        assert (r0.counters.completions, r1.counters.completions) == (0, 1)


async def test_past_restart_intensity_the_deployment_fails_and_others_serve(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    bad = mock_deployment("bad", config={"crash_on_start": 10})
    good = mock_deployment("good")
    async with cluster_of(mock_plugin, bad, good) as cluster:
        assert trio.current_time() == 7.0  # 1 + 2 + 4 s of backoff, then it gave up
        by_name = {d.name: d for d in cluster.list()}
        assert by_name["bad"].state == "failed"
        assert "exceeded its restart intensity (3 restarts within 60s)" in by_name["bad"].reason
        assert "MockReplicaCrash: start 4 fails" in by_name["bad"].reason
        assert by_name["bad"].replicas[0].state == "failed"
        assert by_name["good"].state == "serving"
        assert not cluster.status().ready
        with pytest.raises(CapacityExhaustedError, match="has failed"):
            await cluster.complete("bad", messages=HELLO)
        assert (await cluster.complete("good", messages=HELLO)).deployment == "good"


# -- routing -------------------------------------------------------------------------


async def test_least_outstanding_sends_nothing_to_a_busy_replica(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    # round-robin or a random pick would send a third of these to the busy replica
    dep = mock_deployment("chat", replicas=3, config={"chunk_delay": "10ms"})
    async with cluster_of(mock_plugin, dep) as cluster:
        async with cluster.stream("chat", messages=HELLO) as held:
            assert (await held.__anext__()).text_delta == "Hello"
            [busy] = [r for r in runners.of("chat") if r.counters.executions]
            for i in range(30):
                await cluster.complete("chat", prompt=f"q{i}")
            counts = [r.counters.executions for r in runners.of("chat")]
            assert counts[busy.replica_index] == 1  # only the held stream
            assert sorted(counts) == [1, 15, 15]  # the rest alternate between the idle two
        # once the stream is closed the busy replica takes its turn again
        for i in range(3):
            await cluster.complete("chat", prompt=f"after{i}")
        assert busy.counters.executions == 2


@pytest.mark.slow
async def test_concurrent_load_spreads_evenly_over_three_replicas(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    dep = mock_deployment("chat", replicas=3, config={"chunks": ["a", "b"], "chunk_delay": "10ms"})
    async with cluster_of(mock_plugin, dep) as cluster:
        limit = trio.CapacityLimiter(40)

        async def one(i: int) -> None:
            async with limit:
                await trio.sleep((i % 7) * 0.001)
                await cluster.complete("chat", prompt=f"q{i}")

        async with trio.open_nursery() as nursery:
            for i in range(3000):
                nursery.start_soon(one, i)
        counts = [r.counters.executions for r in runners.of("chat")]
    assert sum(counts) == 3000
    assert max(counts) - min(counts) <= 100  # within 10 % of the 1,000 each would get
    assert all(r.counters.completions == n for r, n in zip(runners.of("chat"), counts, strict=True))


# -- capacity ------------------------------------------------------------------------


def capped(mock_deployment: Any, name: str, policy: CapacityPolicy, **kw: Any) -> Any:
    return mock_deployment(
        name,
        serving=Serving(
            max_concurrent=1, on_capacity_exhausted=policy, max_queued=kw.pop("max_queued", 8)
        ),
        config={"chunk_delay": "1s"},
        **kw,
    )


async def test_capacity_reject_fails_at_once(mock_plugin, mock_deployment, autojump_clock) -> None:
    async with cluster_of(
        mock_plugin, capped(mock_deployment, "chat", CapacityPolicy.REJECT)
    ) as cluster:
        async with cluster.stream("chat", messages=HELLO) as chunks:
            await chunks.__anext__()
            start = trio.current_time()
            with pytest.raises(CapacityExhaustedError, match=r"at capacity \(1 of 1 slots"):
                await cluster.complete("chat", messages=HELLO)
            assert trio.current_time() == start


async def test_capacity_queue_waits_priority_then_fifo(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    dep = capped(mock_deployment, "chat", CapacityPolicy.QUEUE)
    async with cluster_of(mock_plugin, dep) as cluster:
        order: list[str] = []

        async def ask(label: str, priority: Priority) -> None:
            await cluster.complete("chat", messages=HELLO, priority=priority, request_id=label)
            order.append(label)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "first", Priority.NORMAL)
            await trio.sleep(0.5)
            for label, prio in [
                ("n1", Priority.NORMAL),
                ("bg", Priority.BACKGROUND),
                ("n2", Priority.NORMAL),
                ("hi", Priority.HIGH),
            ]:
                nursery.start_soon(ask, label, prio)
                await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert cluster.metrics.sample("atomr_queue_depth", {"deployment": "chat"}) == 4
        assert order == ["first", "hi", "n1", "n2", "bg"]


async def test_capacity_queue_times_out_at_the_request_deadline(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    dep = capped(
        mock_deployment, "chat", CapacityPolicy.QUEUE, timeouts=Timeouts(request_timeout=2.5)
    )
    async with cluster_of(mock_plugin, dep) as cluster:
        async with cluster.stream("chat", messages=HELLO) as chunks:
            await chunks.__anext__()
            start = trio.current_time()
            with pytest.raises(RequestTimeoutError) as caught:
                await cluster.complete("chat", messages=HELLO)
            assert trio.current_time() - start == pytest.approx(2.5)
            assert caught.value.phase == "queue"
            assert caught.value.deployment == "chat"
        assert cluster.runtime("chat").admission.capacity.queued == 0


async def test_full_queue_rejects(mock_plugin, mock_deployment, autojump_clock) -> None:
    dep = capped(mock_deployment, "chat", CapacityPolicy.QUEUE, max_queued=1)
    async with cluster_of(mock_plugin, dep) as cluster:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(partial(cluster.complete, "chat", messages=HELLO))
            await trio.sleep(0.1)
            with pytest.raises(CapacityExhaustedError, match="queue is full"):
                await cluster.complete("chat", messages=HELLO)


async def test_capacity_fallback_moves_to_the_next_deployment(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    primary = capped(mock_deployment, "chat", CapacityPolicy.FALLBACK, fallbacks=["backup"])
    backup = mock_deployment("backup")
    async with cluster_of(mock_plugin, primary, backup) as cluster:
        async with cluster.stream("chat", messages=HELLO) as chunks:
            await chunks.__anext__()
            reply = await cluster.complete("chat", messages=HELLO)
            assert reply.deployment == "backup"
        assert (await cluster.complete("chat", messages=HELLO)).deployment == "chat"
        assert (
            cluster.metrics.sample(
                "atomr_fallbacks_total", {"deployment": "chat", "reason": "capacity_exhausted"}
            )
            == 1
        )


# -- fallbacks -----------------------------------------------------------------------


async def test_fallback_on_open_breaker(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    primary = mock_deployment("chat", fallbacks=["backup"])
    async with cluster_of(mock_plugin, primary, mock_deployment("backup")) as cluster:
        cluster.breaker("chat").force_open(30.0)
        reply = await cluster.complete("chat", messages=HELLO)
        assert reply.deployment == "backup"
        assert runners.of("chat")[0].counters.calls == 0
        assert cluster.list()[0].breaker == "open"
        await trio.sleep(31)
        assert (await cluster.complete("chat", messages=HELLO)).deployment == "chat"


async def test_open_breaker_without_fallback_fails_fast(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("chat")) as cluster:
        cluster.breaker("chat").force_open(30.0)
        with pytest.raises(CircuitOpenError) as caught:
            await cluster.complete("chat", messages=HELLO)
        assert caught.value.deployment == "chat"
        assert 29 < caught.value.retry_after <= 30


async def test_fallback_on_crash_before_output(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    primary = mock_deployment("chat", fallbacks=["backup"], config={"crash_on_call": 1})
    async with cluster_of(mock_plugin, primary, mock_deployment("backup")) as cluster:
        reply = await cluster.complete("chat", messages=HELLO)
        assert reply.deployment == "backup"
        assert reply.text == "Hello, world!"


async def test_fallback_on_upstream_error_before_output(mock_plugin, mock_deployment) -> None:
    primary = mock_deployment("chat", fallbacks=["backup"], config={"fail_with": "server_error"})
    async with cluster_of(mock_plugin, primary, mock_deployment("backup")) as cluster:
        assert (await cluster.complete("chat", messages=HELLO)).deployment == "backup"


async def test_no_fallback_after_output_began(mock_plugin, mock_deployment, runners) -> None:
    primary = mock_deployment("chat", fallbacks=["backup"], config={"fail_after_chunks": 2})
    async with cluster_of(mock_plugin, primary, mock_deployment("backup")) as cluster:
        got: list[str] = []
        with pytest.raises(ServerError) as caught:
            async with cluster.stream("chat", messages=HELLO) as chunks:
                async for chunk in chunks:
                    got.append(chunk.text_delta)
        assert got == ["Hello", ","]
        assert caught.value.deployment == "chat"
        assert runners.of("backup")[0].counters.calls == 0


async def test_bad_request_does_not_fall_back(mock_plugin, mock_deployment, runners) -> None:
    primary = mock_deployment(
        "chat", fallbacks=["backup"], config={"fail_with": "context_length_exceeded"}
    )
    async with cluster_of(mock_plugin, primary, mock_deployment("backup")) as cluster:
        with pytest.raises(Exception, match="context_length_exceeded") as caught:
            await cluster.complete("chat", messages=HELLO)
        assert caught.value.kind == "context_length_exceeded"
        assert runners.of("backup")[0].counters.calls == 0


# -- hot deploy / undeploy -----------------------------------------------------------


async def test_hot_deploy_and_undeploy_under_load_fail_nothing(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    slow = {"chunk_delay": "100ms"}
    async with cluster_of(mock_plugin, mock_deployment("a", config=slow)) as cluster:
        failures: list[BaseException] = []
        served: Counter[str] = Counter()
        stop_b = trio.Event()

        async def ask(model: str, i: int) -> None:
            try:
                reply = await cluster.complete(model, prompt=f"{i}")
                served[reply.deployment] += 1
            except Exception as exc:  # counted, must stay empty
                failures.append(exc)

        async def load_a(n: int) -> None:
            for i in range(n):
                await ask("a", i)

        async def load_b() -> None:
            i = 0
            while not stop_b.is_set():
                await ask("b", i)
                i += 1

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(load_a, 20)
            await trio.sleep(1)
            status = await cluster.deploy(mock_deployment("b", config=slow))
            assert status.state == "serving"
            for _ in range(8):
                nursery.start_soon(load_b)
            await trio.sleep(1)
            # replace "a" while it serves: the old one drains in the background
            await cluster.deploy(mock_deployment("a", config=slow, replicas=2))
            await trio.sleep(0.05)
            stop_b.set()  # clients stop sending to "b"; 8 requests are still in flight
            b = runners.of("b")[0]
            assert b.counters.executions - b.counters.completions == 8
            await cluster.undeploy("b")  # drains its in-flight requests first
            assert b.counters.executions == b.counters.completions
            assert [d.name for d in cluster.list()] == ["a"]
        assert failures == []
        assert served["a"] == 160
        assert served["b"] == b.counters.completions
        assert b.counters.cancellations == 0
        old_a, new_a0, new_a1 = [r for r in runners.all if r.deployment.name == "a"]
        assert (
            old_a.counters.completions + new_a0.counters.completions + new_a1.counters.completions
            == 160
        )
        assert new_a0.counters.completions > 0 and new_a1.counters.completions > 0


async def test_undeploy_without_drain_fails_in_flight_with_draining(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    async with cluster_of(
        mock_plugin, mock_deployment("a", config={"chunk_delay": "1s"})
    ) as cluster:
        with pytest.raises(CapacityExhaustedError) as caught:
            async with cluster.stream("a", messages=HELLO) as chunks:
                async for _ in chunks:
                    await cluster.undeploy("a", drain=False)
        assert caught.value.kind == "draining"


# -- cancellation --------------------------------------------------------------------


async def test_cancelled_stream_leaves_no_task_behind(
    mock_plugin, mock_deployment, runners, autojump_clock
) -> None:
    dep = mock_deployment("chat", replicas=2, config={"chunk_delay": "1s"})
    async with cluster_of(mock_plugin, dep) as cluster:
        root = trio.lowlevel.current_root_task()

        def task_count() -> int:
            def walk(task: trio.lowlevel.Task) -> int:
                return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

            return walk(root)

        await trio.testing.wait_all_tasks_blocked()
        baseline = task_count()
        with trio.move_on_after(2.5):
            async with cluster.stream("chat", messages=HELLO) as chunks:
                async for _ in chunks:
                    pass
        await trio.testing.wait_all_tasks_blocked()
        assert task_count() == baseline
        assert sum(r.counters.cancellations for r in runners.of("chat")) == 1
        [status] = cluster.list()
        assert [r.outstanding for r in status.replicas] == [0, 0]
        assert cluster.runtime("chat").admission.capacity.in_use == 0
        assert (
            cluster.metrics.sample(
                "atomr_requests_total",
                {"deployment": "chat", "status": "cancelled", "error_kind": ""},
            )
            == 1
        )


async def test_execute_takes_a_batch(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("chat")) as cluster:
        batch = ExecuteBatch(request_id="r1", model="chat", kind="completion", prompt="hi")
        async with cluster.execute(batch) as chunks:
            assert {c.request_id async for c in chunks} == {"r1"}
            assert chunks.deployment == "chat"


async def test_failed_replacement_keeps_the_running_deployment(
    mock_plugin, mock_deployment, autojump_clock
) -> None:
    async with cluster_of(mock_plugin, mock_deployment("a")) as cluster:
        status = await cluster.deploy(mock_deployment("a", config={"crash_on_start": 10}))
        assert status.state == "failed"
        [serving] = cluster.list()
        assert serving.state == "serving"
        assert (await cluster.complete("a", messages=HELLO)).deployment == "a"


async def test_non_idempotent_deployment_is_not_resent_after_dispatch(
    mock_plugin, mock_deployment, runners
) -> None:
    primary = mock_deployment(
        "chat", idempotent=False, fallbacks=["backup"], config={"fail_with": "server_error"}
    )
    async with cluster_of(mock_plugin, primary, mock_deployment("backup")) as cluster:
        with pytest.raises(ServerError):
            await cluster.complete("chat", messages=HELLO)
        assert runners.of("backup")[0].counters.calls == 0
        # refused before dispatch (breaker open): nothing was sent, so it moves on
        cluster.breaker("chat").force_open(30.0)
        assert (await cluster.complete("chat", messages=HELLO)).deployment == "backup"


async def test_breaker_and_limiter_errors_name_the_deployment(mock_plugin, mock_deployment) -> None:
    async with cluster_of(mock_plugin, mock_deployment("chat")) as cluster:
        cluster.breaker("chat").force_open(30.0)
        with pytest.raises(CircuitOpenError) as opened:
            await cluster.complete("chat", messages=HELLO)
        assert "circuit breaker 'chat' for mock is open" in opened.value.message
        assert cluster.limiter("chat").name == "chat"
