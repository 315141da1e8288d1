"""``serve --workers N``: one port, N supervised gateway processes sharing redis state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from atomr_infer_testkit import MockOpenAIServer, open_mock_server

ROOT = Path(__file__).resolve().parents[1]

MEMORY = """
[cluster]
name = "w"
bind = "127.0.0.1:0"

[[deployment]]
name = "echo"
model = "mock"
runtime = "mock"
"""

FLEET = """
[cluster]
name = "w"
bind = "127.0.0.1:0"
shutdown_grace = "10s"

[state]
backend = "redis"
url = "{redis}"
lease = "2s"

[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
base_url = "{upstream}/v1"
api_key = "sk-test"
[deployment.rate_limits]
concurrent_requests = 3
"""

QUIET = ("--log-level", "warning", "--config")

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "one two"}], "max_tokens": 4}


def test_more_than_one_worker_on_the_memory_backend_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(MEMORY)
    done = subprocess.run(
        [sys.executable, "-m", "atomr_infer", "serve", "--workers", "2", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "ATOMR_INFER_LOAD_PLUGINS": "testkit"},
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers 2 needs state the workers share" in done.stderr
    assert '[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:6379/0"' in done.stderr


async def _wait_for_line(stream: trio.abc.ReceiveStream, needle: bytes, seen: bytearray) -> None:
    while needle not in seen:
        data = await stream.receive_some(4096)
        assert data, f"the supervisor's stderr closed before {needle!r}"
        seen += data


@pytest.mark.slow
async def test_three_workers_share_a_port_and_the_limits_restart_and_drain(
    redis_server, tmp_path: Path, read_banner: Callable[[trio.Process], Awaitable[str]]
) -> None:
    async with open_mock_server(MockOpenAIServer()) as upstream:
        path = tmp_path / "fleet.toml"
        path.write_text(FLEET.format(redis=redis_server.url, upstream=upstream.url))
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "atomr_infer", "serve", "--workers", "3", *QUIET, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "ATOMR_INFER_LOAD_PLUGINS": "openai"},
        )
        assert proc.stderr is not None
        log = bytearray()
        try:
            with trio.fail_after(120):
                url = await read_banner(proc)
                for i in range(3):
                    await _wait_for_line(proc.stderr, f"worker {i} (pid ".encode(), log)
                pids = {
                    int(line.split(b"(pid ")[1].split(b")")[0])
                    for line in bytes(log).splitlines()
                    if b"serving" in line
                }
                assert len(pids) == 3 and proc.pid not in pids
                for _ in range(18):
                    upstream.slow_first_byte(0.3)
                async with httpx.AsyncClient(timeout=30) as http:
                    statuses: list[int] = []

                    async def ask() -> None:
                        reply = await http.post(f"{url}/v1/chat/completions", json=CHAT)
                        statuses.append(reply.status_code)

                    async with trio.open_nursery() as nursery:
                        for _ in range(18):
                            nursery.start_soon(ask)
                    assert statuses == [200] * 18
                    assert upstream.peak_in_flight == 3  # the fleet's cap, over 3 workers

                    # a worker killed with -9 is restarted; the others keep serving
                    victim = min(pids)
                    os.kill(victim, signal.SIGKILL)
                    await _wait_for_line(proc.stderr, f"(pid {victim}) exited with".encode(), log)
                    for _ in range(3):
                        reply = await http.post(f"{url}/v1/chat/completions", json=CHAT)
                        assert reply.status_code == 200
                    while bytes(log).count(b"serving") < 4:  # the three, then the restart
                        data = await proc.stderr.receive_some(4096)
                        assert data
                        log += data

                    # SIGTERM drains every worker: in-flight requests finish, exit 0. The
                    # victim may have died before its last release reached redis: that slot
                    # comes back when its lease (2 s) runs out, well inside the 6 s first byte
                    for _ in range(3):
                        upstream.slow_first_byte(6.0)
                    drained: list[int] = []

                    async def slow() -> None:
                        reply = await http.post(f"{url}/v1/chat/completions", json=CHAT)
                        drained.append(reply.status_code)

                    async with trio.open_nursery() as nursery:
                        for _ in range(3):
                            nursery.start_soon(slow)
                        await upstream.wait_for_in_flight(3)
                        proc.send_signal(signal.SIGTERM)
                    assert drained == [200, 200, 200]
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == 0, bytes(log).decode(errors="replace")
