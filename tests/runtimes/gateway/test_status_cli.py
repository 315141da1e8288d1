"""``atomr-infer status --url`` against a running gateway."""

from __future__ import annotations

import pytest
import trio

from atomr_infer._cli import main
from atomr_infer_testkit import MockConfig

from .conftest import FakeCluster, open_gateway


async def test_status_prints_a_running_gateways_deployments(
    capfd: pytest.CaptureFixture[str],
) -> None:

    cluster = FakeCluster({"chat": MockConfig(), "other": MockConfig()}, states={"other": "failed"})
    async with open_gateway(cluster) as url:
        code = await trio.to_thread.run_sync(main, ["status", "--url", url])
    out = capfd.readouterr().out
    assert code == 0
    assert "NOT ready" in out
    assert "chat" in out
    assert "failed" in out
    assert "closed" in out
