"""The gateway on the real Cluster with the testkit's mock runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing

from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockRunner, mock_runtime_plugin

from .test_disconnect import _count_tasks, _open, _request

HI = [{"role": "user", "content": "hi"}]

CONFIG = {
    "cluster": {"bind": "127.0.0.1:0"},
    "deployment": [
        {
            "name": "chat",
            "model": "mock",
            "runtime": "mock",
            "runtime_config": {"chunks": ["Hel", "lo"], "input_tokens": 3},
        },
        {
            "name": "slow",
            "model": "mock",
            "runtime": "mock",
            "runtime_config": {"chunks": ["a", "b", "c", "d", "e"], "chunk_delay": "50ms"},
        },
        {
            "name": "stuck",
            "model": "mock",
            "runtime": "mock",
            "runtime_config": {"chunks": ["x"], "chunk_delay": "1h"},
        },
        {
            "name": "limited",
            "model": "mock",
            "runtime": "mock",
            "runtime_config": {"fail_with": "rate_limited"},
        },
        {
            "name": "broken",
            "model": "mock",
            "runtime": "mock",
            "runtime_config": {"fail_with": "server_error"},
        },
        {
            "name": "filtered",
            "model": "mock",
            "runtime": "mock",
            "runtime_config": {"fail_with": "content_filtered"},
        },
    ],
}


class TimedRunner(MockRunner):
    """A MockRunner that reports when a request's handle was entered and left."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.entered = trio.Event()
        self.exited = trio.Event()
        self.exit_times: list[float] = []

    def execute(self, batch: Any) -> Any:
        return self._timed(batch)

    @asynccontextmanager
    async def _timed(self, batch: Any) -> AsyncIterator[Any]:
        self.entered.set()
        try:
            async with MockRunner.execute(self, batch) as chunks:
                yield chunks
        finally:
            self.exit_times.append(trio.current_time())
            self.exited.set()


@asynccontextmanager
async def open_real_gateway() -> AsyncIterator[tuple[str, dict[str, TimedRunner]]]:
    runners: dict[str, TimedRunner] = {}
    plugin = mock_runtime_plugin(
        runner_class=TimedRunner, on_create=lambda r: runners.__setitem__(r.deployment.name, r)
    )
    async with open_cluster(
        load_config(CONFIG), plugins=[plugin], load_entry_points=False
    ) as cluster:
        async with open_gateway(cluster) as url:
            yield url, runners


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="dummy", max_retries=0)


async def test_sdk_chat_stream_completions_embeddings_models() -> None:
    async with open_real_gateway() as (url, _), _client(url) as client:
        reply = await client.chat.completions.create(model="chat", messages=HI)
        stream = await client.chat.completions.create(
            model="chat", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        completion = await client.completions.create(model="chat", prompt="hi")
        vectors = await client.embeddings.create(model="chat", input=["a", "b"], dimensions=3)
        models = await client.models.list()
    assert reply.choices[0].message.content == "Hello"
    assert reply.usage.prompt_tokens == 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].usage.completion_tokens == 2
    assert completion.choices[0].text == "Hello"
    assert [len(d.embedding) for d in vectors.data] == [3, 3]
    assert [m.id for m in models.data] == ["chat", "slow", "stuck", "limited", "broken", "filtered"]


@pytest.mark.parametrize(
    ("model", "sdk_error", "status"),
    [
        ("nope", openai.NotFoundError, 404),
        ("limited", openai.RateLimitError, 429),
        ("broken", openai.InternalServerError, 502),
        ("filtered", openai.BadRequestError, 400),
    ],
)
async def test_cluster_errors_arrive_as_sdk_exceptions(
    model: str, sdk_error: type[openai.APIStatusError], status: int
) -> None:
    async with open_real_gateway() as (url, _), _client(url) as client:
        with pytest.raises(sdk_error) as caught:
            await client.chat.completions.create(model=model, messages=HI)
    assert caught.value.status_code == status


async def test_health_ready_and_status_from_the_cluster() -> None:
    async with open_real_gateway() as (url, _), httpx.AsyncClient(base_url=url) as http:
        ready = await http.get("/health/ready")
        status = await http.get("/v1/status")
        metrics = await http.get("/metrics")
    assert ready.status_code == 200
    assert {d["state"] for d in ready.json()["deployments"]} == {"serving"}
    assert status.json()["deployments"][0]["breaker"] == "closed"
    assert metrics.status_code == 200


async def test_dropped_stream_cancels_the_runner_within_100ms() -> None:
    async with open_real_gateway() as (url, runners):
        await trio.testing.wait_all_tasks_blocked()
        baseline = _count_tasks()
        stream, port = await _open(url)
        await stream.send_all(_request(port, {"model": "slow", "messages": HI, "stream": True}))
        received = b""
        while received.count(b'"content":"') < 3:
            received += await stream.receive_some(65536)
        await stream.aclose()
        dropped = trio.current_time()
        runner = runners["slow"]
        await runner.exited.wait()
        assert runner.exit_times[0] - dropped < 0.1
        assert runner.counters.cancellations == 1
        await trio.testing.wait_all_tasks_blocked()
        assert _count_tasks() == baseline


async def test_request_dropped_before_first_token_cancels_the_runner_within_100ms() -> None:
    async with open_real_gateway() as (url, runners):
        await trio.testing.wait_all_tasks_blocked()
        baseline = _count_tasks()
        stream, port = await _open(url)
        await stream.send_all(_request(port, {"model": "stuck", "messages": HI}))
        runner = runners["stuck"]
        await runner.entered.wait()
        await stream.aclose()
        dropped = trio.current_time()
        await runner.exited.wait()
        assert runner.exit_times[0] - dropped < 0.1
        assert runner.counters.cancellations == 1
        await trio.testing.wait_all_tasks_blocked()
        assert _count_tasks() == baseline
