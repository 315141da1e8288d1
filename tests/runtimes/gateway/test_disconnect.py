"""A client that leaves cancels the runner's work at once, also before the first token."""

from __future__ import annotations

import json

import trio
import trio.testing

from .conftest import FakeCluster, open_gateway


def _count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return walk(trio.lowlevel.current_root_task())


def _request(port: int, body: dict[str, object]) -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


async def _open(url: str) -> tuple[trio.SocketStream, int]:
    port = int(url.rsplit(":", 1)[1])
    return await trio.open_tcp_stream("127.0.0.1", port), port


async def test_client_dropping_a_stream_after_two_chunks_cancels_the_runner(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url:
        await trio.testing.wait_all_tasks_blocked()
        baseline = _count_tasks()
        stream, port = await _open(url)
        await stream.send_all(
            _request(
                port,
                {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            )
        )
        received = b""
        while received.count(b'"content":"') < 3:  # role chunk ("") + 2 content chunks
            received += await stream.receive_some(65536)
        assert b'"content":"a"' in received
        assert b'"content":"b"' in received
        await stream.aclose()
        dropped_at = trio.current_time()
        record = default_cluster.records[0]
        await record.exited.wait()
        assert record.cancelled
        assert record.exited_at - dropped_at < 0.1
        assert default_cluster.runners["slow"].counters.cancellations == 1
        await trio.testing.wait_all_tasks_blocked()
        assert _count_tasks() == baseline


async def test_client_dropping_before_the_first_token_cancels_the_runner(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url:
        await trio.testing.wait_all_tasks_blocked()
        baseline = _count_tasks()
        for stream_flag in (False, True):
            default_cluster.entered = trio.Event()
            stream, port = await _open(url)
            body = {
                "model": "stuck",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream_flag,
            }
            await stream.send_all(_request(port, body))
            await default_cluster.entered.wait()
            await stream.aclose()
            dropped_at = trio.current_time()
            record = default_cluster.records[-1]
            await record.exited.wait()
            assert record.cancelled
            assert record.exited_at - dropped_at < 0.1
        assert default_cluster.runners["stuck"].counters.cancellations == 2
        await trio.testing.wait_all_tasks_blocked()
        assert _count_tasks() == baseline
