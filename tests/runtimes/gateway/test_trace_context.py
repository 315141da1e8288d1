"""An incoming W3C ``traceparent`` reaches the runner even with tracing off."""

from __future__ import annotations

import httpx
import pytest

from .conftest import FakeCluster, open_gateway

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (VALID, VALID),
        (None, None),
        ("not-a-traceparent", None),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
    ],
)
async def test_traceparent_is_passed_on_only_when_valid(
    default_cluster: FakeCluster, sent: str | None, received: str | None
) -> None:
    headers = {"traceparent": sent} if sent else {}
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        reply = await http.post(
            "/v1/chat/completions", json={"model": "chat", "messages": HI}, headers=headers
        )
    assert reply.status_code == 200
    (record,) = default_cluster.records
    assert record.batch.traceparent == received
