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


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/v1/status", "/"])
async def test_status_accepts_the_sdks_base_url(
    suffix: str, capfd: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster({"chat": MockConfig()})
    async with open_gateway(cluster) as url:
        code = await trio.to_thread.run_sync(main, ["status", "--url", url + suffix])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert f"at {url}: ready" in captured.out


async def test_status_columns_stay_aligned_with_long_names(
    capfd: pytest.CaptureFixture[str],
) -> None:
    long_name = "a-deployment-name-much-longer-than-the-column-it-used-to-get"
    cluster = FakeCluster({long_name: MockConfig(), "chat": MockConfig()})
    async with open_gateway(cluster) as url:
        assert await trio.to_thread.run_sync(main, ["status", "--url", url]) == 0
    header, *rows = capfd.readouterr().out.splitlines()[1:]
    runtime_column = header.index("runtime")
    for row in rows:
        assert row[runtime_column - 2 : runtime_column] == "  "
        assert row[runtime_column:].split()[0] == "mock"
