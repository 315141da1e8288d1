"""The mock servers from the shell: HTTP fault controls and ``python -m atomr_infer mock``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest
import trio

from atomr_infer_testkit import mock_anthropic, mock_openai

KEYED = {"x-api-key": "sk-ant-right", "anthropic-version": "2023-06-01"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]}


async def test_faults_posted_over_http_are_served_in_order() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        queued = await client.post(
            "/_mock/faults", json={"fault": "status", "status": 429, "retry_after": 2, "count": 2}
        )
        assert queued.json() == {"queued": 2}
        first = await client.post("/v1/chat/completions", json=CHAT)
        second = await client.post("/v1/chat/completions", json=CHAT)
        third = await client.post("/v1/chat/completions", json=CHAT)
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["retry-after"] == "2"
    assert third.json()["choices"][0]["message"]["content"] == "Echo: hi there"


async def test_clear_faults_forgets_the_queue_and_keeps_the_record() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.inject_5xx(3)
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 503
        assert server.clear_faults() == 2
        assert server.pending_faults == 0
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert len(server.requests) == 2


async def test_a_stream_fault_posted_over_http_cuts_the_stream() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        await client.post("/_mock/faults", json={"fault": "drop_after", "chunks": 2})
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert server.streams_started == 1
    assert server.streams_completed == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"fault": "nope"}, "'fault' must be one of status, slow_first_byte, stall_after"),
        ({"fault": "status"}, "'status' must be an integer >= 100 (got None)"),
        ({"fault": "status", "status": 500, "count": 0}, "'count' must be an integer >= 1"),
        ({"fault": "slow_first_byte", "seconds": "3"}, "'seconds' must be a number >= 0"),
        ({"fault": "stall_after", "chunks": -1}, "'chunks' must be an integer >= 0"),
        ([1, 2], "the body must be a JSON object"),
    ],
)
async def test_a_bad_fault_is_400_and_queues_nothing(spec: object, message: str) -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/_mock/faults", json=spec)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert server.pending_faults == 0


async def test_requests_and_reset_need_no_key_and_never_take_a_fault() -> None:
    async with mock_anthropic() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.require_api_key("sk-ant-right")
        await client.post("/_mock/faults", json={"fault": "status", "status": 529})
        body = {
            "model": "claude-x",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "a"}],
        }
        seen = await client.get("/_mock/requests")
        assert seen.json() == {"count": 0, "requests": []}
        overloaded = await client.post("/v1/messages", json=body, headers=KEYED)
        seen = await client.get("/_mock/requests")
        assert seen.json() == {
            "count": 1,
            "requests": [{"method": "POST", "path": "/v1/messages", "json": body}],
        }
        await client.post("/_mock/faults", json={"fault": "status", "status": 500})
        reset = await client.post("/_mock/reset")
        after = await client.get("/_mock/requests")
        answered = await client.post("/v1/messages", json=body, headers=KEYED)
    assert overloaded.status_code == 529
    assert reset.json() == {"queued": 0}
    assert after.json()["count"] == 0
    assert answered.status_code == 200


def _env() -> dict[str, str]:
    return {**os.environ, "ATOMR_INFER_LOAD_PLUGINS": ""}


async def _banner(proc: trio.Process) -> str:
    assert proc.stdout is not None
    buffer = b""
    while b"Ctrl-C stops it." not in buffer:
        data = await proc.stdout.receive_some(4096)
        assert data, "mock exited before printing its banner"
        buffer += data
    return buffer.decode()


@pytest.mark.slow
async def test_mock_command_serves_until_sigint_and_requires_its_key() -> None:
    command = [sys.executable, "-m", "atomr_infer", "mock", "openai", "--api-key", "sk-mine"]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, env=_env())
    try:
        with trio.fail_after(60):
            banner = await _banner(proc)
        url = banner.split(" server on ", 1)[1].split()[0]
        assert f'base_url = "{url}/v1"' in banner
        assert f"export OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY=sk-mine" in banner
        assert "accepts only the key 'sk-mine'" in banner
        async with httpx.AsyncClient(base_url=url) as client:
            refused = await client.post("/v1/chat/completions", json=CHAT)
            answered = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-mine"}
            )
        assert refused.status_code == 401
        assert answered.json()["choices"][0]["message"]["content"] == "Echo: hi there"
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_mock_command_on_a_taken_port_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "atomr_infer", "mock", "gemini", "--port", str(port)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
        )
    assert result.returncode == 1
    assert f"atomr-infer mock: cannot listen on 127.0.0.1:{port}:" in result.stderr
    assert "Traceback" not in result.stderr
