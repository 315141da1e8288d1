"""Real gateway processes sharing one real redis-server, in front of the testkit's mock
OpenAI server (real HTTP): the limits of a deployment hold for the fleet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from atomr_infer_testkit import MockOpenAIServer, open_mock_server

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

QUIET = ("--log-level", "warning")

Banner = Callable[[trio.Process], Awaitable[str]]


def fleet_toml(redis_url: str, upstream: str, deployment: str, **state: str) -> str:
    extra = "".join(f'{k} = "{v}"\n' for k, v in state.items())
    return f"""
[cluster]
name = "fleet"
bind = "127.0.0.1:0"

[state]
backend = "redis"
url = "{redis_url}"
{extra}
[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
base_url = "{upstream}/v1"
api_key = "sk-test"
[deployment.retry]
max_retries = 0
{deployment}
"""


@asynccontextmanager
async def gateways(
    tmp_path: Path, toml: str, n: int, read_banner: Banner
) -> AsyncIterator[list[tuple[trio.Process, str]]]:
    path = tmp_path / "fleet.toml"
    path.write_text(toml)
    env = {**os.environ, "ATOMR_INFER_LOAD_PLUGINS": "openai"}
    procs: list[trio.Process] = []
    try:
        for _ in range(n):
            procs.append(
                await trio.lowlevel.open_process(
                    [sys.executable, "-m", "atomr_infer", "serve", "--config", str(path), *QUIET],
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                    env=env,
                )
            )
        with trio.fail_after(90):
            urls = [await read_banner(proc) for proc in procs]
        yield list(zip(procs, urls, strict=True))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 8,
        "stream": stream,
        **extra,
    }


async def test_three_processes_hold_the_concurrency_cap_and_rpm_at_the_upstream(
    redis_server, tmp_path: Path, read_banner: Banner
) -> None:
    async with open_mock_server(MockOpenAIServer()) as upstream:
        for _ in range(24):
            upstream.slow_first_byte(0.5)  # every answer takes 0.5 s: they overlap
        limits = "[deployment.rate_limits]\nconcurrent_requests = 4\nrequests_per_minute = 18\n"
        toml = fleet_toml(redis_server.url, upstream.url, limits)
        async with gateways(tmp_path, toml, 3, read_banner) as fleet:
            statuses: list[int] = []
            async with httpx.AsyncClient(timeout=30) as http:
                status = (await http.get(f"{fleet[0][1]}/v1/status")).json()
                assert status["state_scope"] == "fleet"

                async def ask(url: str) -> None:
                    reply = await http.post(f"{url}/v1/chat/completions", json=chat())
                    statuses.append(reply.status_code)

                async with trio.open_nursery() as nursery:
                    for i in range(30):
                        nursery.start_soon(ask, fleet[i % 3][1])
        assert upstream.peak_in_flight == 4
        assert statuses.count(200) == 18  # the fleet's RPM, not 3 x 18
        assert statuses.count(429) == 12
        assert len(upstream.requests) == 18


async def test_slots_of_a_killed_process_come_back_within_the_lease(
    redis_server, tmp_path: Path, read_banner: Banner
) -> None:
    async with open_mock_server(MockOpenAIServer()) as upstream:
        for _ in range(2):
            upstream.slow_first_byte(60)  # the doomed process's two requests hang upstream
        limits = "[deployment.rate_limits]\nconcurrent_requests = 2\n"
        toml = fleet_toml(redis_server.url, upstream.url, limits, lease="1500ms")
        async with gateways(tmp_path, toml, 2, read_banner) as [(doomed, doomed_url), (_, url)]:
            async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as nursery:

                async def held_by_the_doomed() -> None:
                    with pytest.raises(httpx.RemoteProtocolError):  # it dies under us
                        await http.post(f"{doomed_url}/v1/chat/completions", json=chat())

                for _ in range(2):
                    nursery.start_soon(held_by_the_doomed)
                await upstream.wait_for_in_flight(2)
                doomed.send_signal(signal.SIGKILL)
                killed_at = trio.current_time()
                reply = await http.post(f"{url}/v1/chat/completions", json=chat())
                waited = trio.current_time() - killed_at
        assert reply.status_code == 200
        # the slots stayed taken until their lease ran out (renewed every lease / 3)
        assert 1.5 * 2 / 3 - 0.2 <= waited <= 1.5 + 1.5  # the lease, plus a loaded machine


async def test_a_breaker_opened_through_one_process_is_open_in_the_others(
    redis_server, tmp_path: Path, read_banner: Banner
) -> None:
    async with open_mock_server(MockOpenAIServer()) as upstream:
        upstream.inject_5xx(1, status=500)
        breaker = '[deployment.circuit_breaker]\nfailure_threshold = 1\nopen_duration = "30s"\n'
        toml = fleet_toml(redis_server.url, upstream.url, breaker, sync_interval="50ms")
        async with gateways(tmp_path, toml, 3, read_banner) as fleet:
            async with httpx.AsyncClient(timeout=30) as http:
                first = await http.post(f"{fleet[0][1]}/v1/chat/completions", json=chat())
                assert first.status_code == 502
                await trio.sleep(1.5)  # thirty sync intervals, for a loaded machine
                for _, url in fleet[1:]:
                    reply = await http.post(f"{url}/v1/chat/completions", json=chat())
                    assert reply.status_code == 503
                    assert reply.json()["error"]["code"] == "circuit_open"
                    assert 25 < float(reply.headers["retry-after"]) <= 30
        assert len(upstream.requests) == 1


async def test_budget_holds_across_processes_within_one_requests_worst_case(
    redis_server, tmp_path: Path, read_banner: Banner
) -> None:
    # gpt-4o-mini: $0.15 / Mtok in, $0.60 / Mtok out
    def cost(usage: dict[str, int]) -> float:
        return (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6

    async with open_mock_server(MockOpenAIServer()) as upstream:
        async with httpx.AsyncClient(timeout=30) as http:  # what one answer costs
            probe = await http.post(
                f"{upstream.url}/v1/chat/completions", json={**chat(), "model": "gpt-4o-mini"}
            )
        limit = 10 * cost(probe.json()["usage"])  # 30 requests cannot all fit
        for _ in range(30):
            upstream.slow_first_byte(0.1)
        budget = f"[deployment.budget]\nmax_spend_per_hour_usd = {limit!r}\n"
        toml = fleet_toml(redis_server.url, upstream.url, budget)
        async with gateways(tmp_path, toml, 3, read_banner) as fleet:
            costs: list[float] = []
            refused = 0
            async with httpx.AsyncClient(timeout=30) as http:

                async def ask(url: str) -> None:
                    nonlocal refused
                    reply = await http.post(f"{url}/v1/chat/completions", json=chat())
                    if reply.status_code == 429:
                        assert reply.json()["error"]["code"] == "insufficient_quota"
                        refused += 1
                        return
                    assert reply.status_code == 200
                    costs.append(cost(reply.json()["usage"]))

                async with trio.open_nursery() as nursery:
                    for i in range(30):
                        nursery.start_soon(ask, fleet[i % 3][1])
        assert refused > 0 and len(costs) + refused == 30
        assert sum(costs) <= limit
