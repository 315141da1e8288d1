"""``serve --log-format json``: a real gateway process whose stderr is one JSON object a line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from atomr_infer_runtimes._logging import JsonFormatter

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[cluster]
name = "t"
bind = "127.0.0.1:0"
api_keys = ["gateway-key-do-not-log"]
log_format = "{log_format}"

[[deployment]]
name = "echo"
model = "mock"
runtime = "mock"
[deployment.runtime_config]
chunks = ["hi", "!"]
input_tokens = 4

[[deployment]]
name = "broken"
model = "mock"
runtime = "mock"
[deployment.runtime_config]
fail_with = "server_error"
"""


async def _read_banner(proc: trio.Process) -> str:
    assert proc.stdout is not None
    buffer = b""
    while b"atomr-infer gateway on " not in buffer or not buffer.endswith(b"\n"):
        data = await proc.stdout.receive_some(4096)
        assert data, "serve exited before printing its banner"
        buffer += data
    line = next(ln for ln in buffer.decode().splitlines() if "atomr-infer gateway on " in ln)
    return line.split(" on ", 1)[1].split()[0]


async def _serve_and_call(tmp_path: Path, *flags: str, log_format: str = "text") -> str:
    path = tmp_path / "atomr.toml"
    path.write_text(CONFIG.format(log_format=log_format))
    stderr = (tmp_path / "stderr.log").open("wb")
    env = dict(os.environ, ATOMR_INFER_LOAD_PLUGINS="testkit")
    command = [sys.executable, "-m", "atomr_infer", "serve", "--config", str(path), *flags]
    proc = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=env
    )
    try:
        with trio.fail_after(60):
            url = await _read_banner(proc)
            headers = {"authorization": "Bearer gateway-key-do-not-log"}
            secret_prompt = [{"role": "user", "content": "my password is hunter2"}]
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
                ok = await http.post(
                    "/v1/chat/completions",
                    json={"model": "echo", "messages": secret_prompt},
                    headers={"x-request-id": "req-json-1"},
                )
                failed = await http.post(
                    "/v1/chat/completions",
                    json={"model": "broken", "messages": secret_prompt},
                    headers={"x-request-id": "req-json-2"},
                )
            assert (ok.status_code, failed.status_code) == (200, 502)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()
    return (tmp_path / "stderr.log").read_text()


@pytest.mark.slow
async def test_json_log_lines_parse_and_carry_request_fields(tmp_path: Path) -> None:
    text = await _serve_and_call(tmp_path, "--log-format", "json")
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "serve wrote no log lines"
    assert all({"time", "level", "logger", "event"} <= line.keys() for line in lines)
    access = {line["request_id"]: line for line in lines if "status" in line}
    ok, failed = access["req-json-1"], access["req-json-2"]
    assert ok["status"] == 200 and ok["deployment"] == "echo"
    assert (ok["tokens_in"], ok["tokens_out"]) == (4, 2)
    assert ok["method"] == "POST" and ok["path"] == "/v1/chat/completions"
    assert isinstance(ok["latency_ms"], int | float)
    assert failed["status"] == 502 and failed["deployment"] == "broken"
    assert "tokens_in" not in failed
    assert "hunter2" not in text
    assert "gateway-key-do-not-log" not in text


@pytest.mark.slow
async def test_the_config_picks_json_and_the_flag_wins(tmp_path: Path) -> None:
    from_config = await _serve_and_call(tmp_path, log_format="json")
    assert all(json.loads(line) for line in from_config.splitlines() if line.strip())
    flag = await _serve_and_call(tmp_path, "--log-format", "text", log_format="json")
    assert "request_id=req-json-1" in flag
    assert not any(line.startswith("{") for line in flag.splitlines())


def test_json_formatter_copies_only_the_request_fields() -> None:
    record = logging.LogRecord("atomr_infer.gateway", logging.WARNING, "", 0, "a %s", ("b",), None)
    record.request_id = "req-1"
    record.status = 429
    record.prompt = "secret words"  # not a request field: never written
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "a b"
    assert line["level"] == "warning"
    assert line["request_id"] == "req-1" and line["status"] == 429
    assert "prompt" not in line and "secret words" not in json.dumps(line)
    assert line["time"].endswith("+00:00")
