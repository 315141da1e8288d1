"""A client leaving a front door's request cancels the runner's work, as on the chat door."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from .conftest import FakeCluster, open_gateway
from .test_disconnect import _count_tasks, _open

HI = [{"role": "user", "content": "hi"}]


def _post(port: int, path: str, body: dict[str, object]) -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "stuck", "max_tokens": 8, "messages": HI}),
        ("/v1/responses", {"model": "stuck", "input": "hi"}),
    ],
)
async def test_client_leaving_a_front_door_cancels_the_runner(
    default_cluster: FakeCluster, path: str, body: dict[str, object]
) -> None:
    async with open_gateway(default_cluster) as url:
        await trio.testing.wait_all_tasks_blocked()
        baseline = _count_tasks()
        for stream_flag in (False, True):
            default_cluster.entered = trio.Event()
            stream, port = await _open(url)
            await stream.send_all(_post(port, path, {**body, "stream": stream_flag}))
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
