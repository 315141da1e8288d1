"""A request can only fail itself: crash logs tell the truth, every request is counted
once, and plugin model patterns hold in a TOML file too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from atomr_infer_core import Deployment, RuntimePlugin, SessionRebuildCause, TransportKind
from atomr_infer_core.errors import SessionPoisonedError
from atomr_infer_runtimes import open_cluster
from atomr_infer_testkit import MockConfig

from .conftest import FAST_RESTARTS
from .test_batching import ScriptedModel

HELLO = [{"role": "user", "content": "hello"}]


class _RebuildFails(ScriptedModel):
    """A model whose session cannot be rebuilt: a failed step crashes the replica."""

    def rebuild(self, cause: SessionRebuildCause) -> None:
        if cause is SessionRebuildCause.SESSION_POISONED:
            raise RuntimeError("cannot reinitialise the device")
        super().rebuild(cause)


@attrs.frozen
class _NoConfig:
    pass


def _scripted_plugin(model: ScriptedModel) -> RuntimePlugin:
    return RuntimePlugin(
        name="mock",
        config_class=_NoConfig,
        create=lambda deployment, config, context: model,
        transport=TransportKind.LOCAL_CPU,
    )


async def test_a_crash_log_names_the_cause_and_the_requests_it_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the real clock: model steps run in worker threads, which an autojump clock would
    # take for idleness and jump past the request deadline
    model = _RebuildFails()
    deployment = Deployment(name="local", model="scripted", runtime="mock")
    caplog.set_level(logging.WARNING, logger="atomr_infer")
    failures: list[BaseException] = []
    async with open_cluster(
        [deployment],
        plugins=[_scripted_plugin(model)],
        load_entry_points=False,
        restart_policy=FAST_RESTARTS,
    ) as cluster:

        async def ask(prompt: str) -> None:
            try:
                await cluster.complete("local", prompt=prompt, max_tokens=50)
            except SessionPoisonedError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for prompt in ("a", "b", "boom"):  # one step: "boom" breaks it for all three
                nursery.start_soon(ask, prompt)
    assert len(failures) == 3
    crash = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert crash[0] == (
        "deployment local: replica 0 crashed (RuntimeError: cannot reinitialise the "
        "device); 3 in-flight requests failed"
    ), crash


def _metric(cluster: Any, **labels: str) -> float:
    return cluster.metrics.sample("atomr_requests_total", labels) or 0.0


async def test_every_request_is_counted_once_also_a_client_leaving_before_output(
    mock_plugin: Any, mock_deployment: Any, autojump_clock: trio.testing.MockClock
) -> None:
    primary = mock_deployment("chat", fallbacks=["backup"], config={"fail_with": "server_error"})
    backup = mock_deployment("backup", config={"chunks": ["ok"]})
    stuck = mock_deployment("stuck", config={"chunk_delay": "1h"})
    async with open_cluster(
        [primary, backup, stuck], plugins=[mock_plugin], load_entry_points=False
    ) as cluster:
        await cluster.complete("chat", messages=HELLO)  # fails on chat, served by backup
        with trio.move_on_after(5):  # the caller gives up before any output
            await cluster.complete("stuck", messages=HELLO)
        with pytest.raises(Exception, match="no deployment"):
            await cluster.complete("nope", messages=HELLO)
        total = sum(
            s.value
            for metric in cluster.metrics.registry.collect()
            if metric.name == "atomr_requests"
            for s in metric.samples
            if s.name == "atomr_requests_total"
        )
        assert total == 3
        assert _metric(cluster, deployment="backup", status="ok", error_kind="") == 1
        assert _metric(cluster, deployment="chat", status="error", error_kind="server_error") == 0
        assert _metric(cluster, deployment="stuck", status="cancelled", error_kind="") == 1
        assert _metric(cluster, deployment="?", status="error", error_kind="not_found") == 1


async def test_a_toml_file_may_name_a_model_only_a_plugin_pattern_claims(
    tmp_path: Path,
) -> None:
    import atomr_infer_testkit._plugin as testkit

    path = tmp_path / "atomr.toml"
    path.write_text('[[deployment]]\nname = "chat"\nmodel = "mock-tiny"\n')
    async with open_cluster(path, plugins=[testkit], load_entry_points=False) as cluster:
        reply = await cluster.complete("chat", messages=HELLO)
    assert reply.text == "".join(MockConfig().chunks)


async def test_the_front_door_counts_what_it_rejects(
    mock_plugin: Any, mock_deployment: Any
) -> None:
    import httpx

    from atomr_infer_runtimes.gateway import open_gateway

    async with open_cluster(
        [mock_deployment("chat")], plugins=[mock_plugin], load_entry_points=False
    ) as cluster:
        async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
            ok = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HELLO})
            bad = await http.post("/v1/chat/completions", content=b'{"model": NaN}')
            wrong = await http.post("/v1/chat/completions", json={"model": "chat"})
        assert (ok.status_code, bad.status_code, wrong.status_code) == (200, 400, 400)
        assert _metric(cluster, deployment="chat", status="ok", error_kind="") == 1
        assert _metric(cluster, deployment="?", status="error", error_kind="bad_request") == 2


@pytest.mark.parametrize(
    ("call", "param"),
    [
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
        ({"prompt": "x\udfff"}, "prompt"),
        ({"messages": HELLO, "stop": ["\ud83d"]}, "stop[0]"),
    ],
)
async def test_embedded_text_with_a_lone_surrogate_never_reaches_a_runner(
    mock_plugin: Any, mock_deployment: Any, runners: Any, call: dict[str, Any], param: str
) -> None:
    from atomr_infer_core.errors import BadRequestError

    async with open_cluster(
        [mock_deployment("chat")], plugins=[mock_plugin], load_entry_points=False
    ) as cluster:
        with pytest.raises(BadRequestError, match="lone UTF-16 surrogate") as caught:
            await cluster.complete("chat", **call)
        reply = await cluster.complete("chat", messages=HELLO)
    assert caught.value.param == param
    [runner] = runners.of("chat")
    assert runner.counters.executions == 1  # only the good request
    assert reply.text == "Hello, world!"
