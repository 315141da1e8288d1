"""Connection hygiene: a closed peer's socket is released at once; on shutdown idle
keep-alive connections close at once and a stream cut by the grace ends properly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio
import trio.testing

from atomr_infer_core import ExecuteBatch, TokenChunk
from atomr_infer_runtimes.gateway import serve_gateway
from atomr_infer_testkit import MockConfig

from .conftest import FakeCluster, open_gateway

HI = [{"role": "user", "content": "hi"}]


def _count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return walk(trio.lowlevel.current_root_task())


def _post(port: int, body: dict[str, object]) -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


def _get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode()


async def _read_response(stream: trio.SocketStream) -> bytes:
    """Read one content-length response; return its head."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def _wait_for_tasks(count: int) -> None:
    """Wait (real time, bounded by the caller) until the task tree is back to ``count``."""
    while _count_tasks() > count:
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)


class _HangingCluster(FakeCluster):
    """Model ``hang`` sends one chunk, then never another (until cancelled)."""

    @asynccontextmanager
    async def execute(self, batch: ExecuteBatch) -> AsyncIterator[Any]:
        if batch.model != "hang":
            async with super().execute(batch) as chunks:
                yield chunks
            return
        yield _OneThenForever(batch.request_id)


class _OneThenForever:
    deployment = "hang"

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._sent = False

    def __aiter__(self) -> _OneThenForever:
        return self

    async def __anext__(self) -> TokenChunk:
        if not self._sent:
            self._sent = True
            return TokenChunk(request_id=self._request_id, text_delta="partial")
        await trio.sleep_forever()
        raise AssertionError("unreachable")


def _cluster(grace: float) -> _HangingCluster:
    cluster = _HangingCluster({"chat": MockConfig(chunks=("a",))})
    cluster.config = attrs.evolve(
        cluster.config, cluster=attrs.evolve(cluster.config.cluster, shutdown_grace=grace)
    )
    return cluster


@asynccontextmanager
async def _serving(cluster: FakeCluster) -> AsyncIterator[tuple[int, trio.Event, trio.Event]]:
    """Serve ``cluster``; yield (port, stop, stopped): set ``stop`` to shut down."""
    stop, stopped = trio.Event(), trio.Event()

    async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_gateway(cluster, port=0, shutdown_trigger=stop.wait, task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.run)
        url = await nursery.start(partial(serve))
        yield int(url.rsplit(":", 1)[1]), stop, stopped
        stop.set()
        await stopped.wait()
        nursery.cancel_scope.cancel()


async def test_a_client_closing_after_a_post_releases_its_connection_at_once(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url:
        port = int(url.rsplit(":", 1)[1])
        await trio.testing.wait_all_tasks_blocked()
        baseline = _count_tasks()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(_post(port, {"model": "chat", "messages": HI}))
        head = await _read_response(stream)
        assert head.startswith(b"HTTP/1.1 200")
        await trio.testing.wait_all_tasks_blocked()  # the server is done: idle keep-alive
        assert _count_tasks() > baseline
        await stream.aclose()
        # hypercorn alone keeps the socket in CLOSE_WAIT for keep_alive_timeout (75 s)
        with trio.fail_after(5):
            await _wait_for_tasks(baseline)


async def test_shutdown_closes_an_idle_keep_alive_connection_at_once() -> None:
    grace = 10.0
    async with _serving(_cluster(grace)) as (port, stop, stopped):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(_get(port, "/health/live"))
        assert (await _read_response(stream)).startswith(b"HTTP/1.1 200")
        await trio.testing.wait_all_tasks_blocked()
        stop.set()
        with trio.fail_after(grace / 4):  # before the fix: the whole grace, then some
            assert await _read_until_closed(stream) == b""
            await stopped.wait()


async def test_a_stream_cut_by_the_grace_ends_with_an_error_event_and_a_proper_end() -> None:
    grace = 0.2
    async with _serving(_cluster(grace)) as (port, stop, stopped):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(_post(port, {"model": "hang", "messages": HI, "stream": True}))
        data = b""
        while b"partial" not in data:
            data += await stream.receive_some(65536)
        stop.set()
        started = trio.current_time()
        with trio.fail_after(grace + 5):
            data += await _read_until_closed(stream)
            await stopped.wait()
        assert trio.current_time() - started >= grace
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.endswith(b"0\r\n\r\n")  # the chunked terminator: a proper end of body
    events = [
        json.loads(line[len(b"data: ") :])
        for line in body.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data: {")
    ]
    assert events[-1]["error"]["code"] == "shutting_down"
    assert events[-1]["error"]["type"] == "server_error"
    assert "partial" in json.dumps(events[:-1])


async def test_a_request_cut_before_output_gets_503_shutting_down() -> None:
    grace = 0.2
    cluster = _cluster(grace)
    cluster.runners["chat"] = type(cluster.runners["chat"])(
        cluster.config.deployment("chat"), MockConfig(chunks=("x",), chunk_delay=3600), None
    )
    async with _serving(cluster) as (port, stop, _stopped):
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster.runners["chat"].run)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(_post(port, {"model": "chat", "messages": HI}))
            await cluster.entered.wait()
            stop.set()
            with trio.fail_after(grace + 5):
                data = await _read_until_closed(stream)
            nursery.cancel_scope.cancel()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert json.loads(body)["error"]["code"] == "shutting_down"
