"""``python -m atomr_infer``: plugins, check, status, serve's refusals, export-onnx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from atomr_infer._cli import main

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
[cluster]
name = "t"
bind = "127.0.0.1:0"

[[deployment]]
name = "echo"
model = "mock"
runtime = "mock"
[deployment.runtime_config]
chunks = ["hi", "!"]
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atomr_infer", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(**env),
        timeout=60,
    )


async def _start_serve(path: Path) -> trio.Process:
    """``serve --config path`` with the testkit plugin, its stdout a pipe (for the banner)."""
    return await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "atomr_infer",
            "serve",
            "--config",
            str(path),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=_env(ATOMR_INFER_LOAD_PLUGINS="testkit"),
    )


def test_version_lists_the_core_and_installed_plugins_without_importing_them() -> None:
    from atomr_infer_core import __version__

    result = _run("--version", ATOMR_INFER_LOAD_PLUGINS="")
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith(f"atomr-infer-trio {__version__} (Python 3.")
    assert f"  atomr-infer-testkit {__version__} (plugin: testkit)" in rest


def test_plugins_lists_the_testkit_runtime() -> None:
    result = _run("plugins", ATOMR_INFER_LOAD_PLUGINS="testkit")
    assert result.returncode == 0
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("testkit"))
    assert "atomr-infer-testkit" in line
    assert "mock, mock-*" in line


def test_check_prints_resolved_deployments(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(GOOD)
    result = _run("check", "--config", str(path), ATOMR_INFER_LOAD_PLUGINS="testkit")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[1:3]
    assert header.split() == ["deployment", "model", "runtime", "replicas", "fallbacks", "package"]
    assert row.split() == ["echo", "mock", "mock", "1", "-", "atomr-infer-testkit"]


def test_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(
        GOOD.replace('chunks = ["hi", "!"]', "chunk_delay = -1")
        + '\n[[deployment]]\nname = "x"\nmodel = "m"\nruntime = "nosuch"\n'
    )
    result = _run("check", "--config", str(path), ATOMR_INFER_LOAD_PLUGINS="testkit")
    assert result.returncode == 1
    assert "deployment[0].runtime_config.chunk_delay" in result.stderr
    assert "deployment[1].runtime" in result.stderr
    assert "pip install" in result.stderr


def test_check_reports_config_errors_with_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[deployment]]\nname = "a"\nmodel = "m"\nreplicas = 0\n')
    assert main(["check", "--config", str(path)]) == 1
    assert "deployment[0].replicas" in capsys.readouterr().err


def test_serve_without_config_or_local_runtime_says_what_to_install() -> None:
    result = _run("serve", ATOMR_INFER_LOAD_PLUGINS="")
    assert result.returncode == 1
    assert "pip install atomr-infer-torch" in result.stderr


def test_export_onnx_without_the_torch_plugin_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "atomr_infer_torch", None)
    assert main(["export-onnx", "sshleifer/tiny-gpt2", "/tmp/x.onnx"]) == 1
    assert "pip install atomr-infer-torch" in capsys.readouterr().err


STREAMING = """
[cluster]
name = "t"
bind = "127.0.0.1:0"
shutdown_grace = "20s"

[[deployment]]
name = "echo"
model = "mock"
runtime = "mock"
[deployment.runtime_config]
chunks = ["a", "b", "c", "d", "e"]
chunk_delay = "100ms"
"""


@pytest.mark.slow
async def test_sigterm_drains_ten_in_flight_streams_and_exits_0(
    tmp_path: Path, read_banner: Callable[[trio.Process], Awaitable[str]]
) -> None:
    import signal

    import httpx

    path = tmp_path / "atomr.toml"
    path.write_text(STREAMING)
    proc = await _start_serve(path)
    try:
        with trio.fail_after(60):
            url = await read_banner(proc)
            results: list[list[str]] = []
            first_chunks = trio.Semaphore(0)
            body = {
                "model": "echo",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            }
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:

                async def stream() -> None:
                    lines: list[str] = []
                    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        assert response.status_code == 200
                        async for line in response.aiter_lines():
                            if line:
                                lines.append(line)
                            if len(lines) == 2:
                                first_chunks.release()
                    results.append(lines)

                async with trio.open_nursery() as nursery:
                    for _ in range(10):
                        nursery.start_soon(stream)
                    for _ in range(10):
                        await first_chunks.acquire()
                    proc.send_signal(signal.SIGTERM)
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
    assert len(results) == 10
    for lines in results:
        assert lines[-1] == "data: [DONE]"
        assert sum('"content":"' in ln for ln in lines) == 6  # role chunk + 5 tokens


REMOTE_ONLY_PROBE = """
import os, signal, sys
import atomr_infer._cli as cli

banner = cli._banner
def stop_after_start(url, config):
    os.kill(os.getpid(), signal.SIGTERM)
    return banner(url, config)
cli._banner = stop_after_start
code = cli.main(["serve", "--config", sys.argv[1], "--port", "0", "--log-level", "warning"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime", "transformers"))
print("EXIT", code, "HEAVY", heavy)
"""


@pytest.mark.slow
def test_remote_only_serve_imports_no_torch_or_onnxruntime(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(
        '[cluster]\nbind = "127.0.0.1:0"\n\n[[deployment]]\nname = "chat"\nmodel = "gpt-4o-mini"\n'
        'runtime = "openai"\n[deployment.runtime_config]\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key = "sk-test"\n'
    )
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_ONLY_PROBE, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "ATOMR_INFER_LOAD_PLUGINS"},
        timeout=120,
    )
    assert "EXIT 0 HEAVY []" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_demo_runs_the_three_scenarios_against_the_mock_server() -> None:
    result = _run("demo", ATOMR_INFER_LOAD_PLUGINS="openai,testkit")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(ln.startswith("2 429 retried") and " ok " in ln for ln in lines)
    assert any(ln.startswith("3 circuit opens") and "CircuitOpenError" in ln for ln in lines)
    assert "all scenarios behaved as expected" in result.stdout


def test_serve_refuses_a_public_bind_without_keys(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(GOOD.replace('bind = "127.0.0.1:0"', 'bind = "0.0.0.0:0"'))
    result = _run("serve", "--config", str(path), ATOMR_INFER_LOAD_PLUGINS="testkit")
    assert result.returncode == 1
    assert "allow_unauthenticated" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_an_invalid_runtime_config_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(GOOD.replace('chunks = ["hi", "!"]', "chunk_delay = -1"))
    result = _run("serve", "--config", str(path), ATOMR_INFER_LOAD_PLUGINS="testkit")
    assert result.returncode == 1
    assert "runtime_config.chunk_delay" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- start-up problems, at once

EVERYTHING_WRONG = """
[cluster]
name = "t"
bind = "0.0.0.0:0"

[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
api_key = "${ATOMR_TEST_UNSET_KEY}"

[[deployment]]
name = "local"
model = "mock-small"
[deployment.runtime_config]
chunk_delay = -1
"""


@pytest.mark.parametrize("command", ["check", "serve"])
def test_check_and_serve_report_every_startup_problem_in_one_go(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(EVERYTHING_WRONG)
    env = {"ATOMR_INFER_LOAD_PLUGINS": "openai,testkit"}
    result = _run(command, "--config", str(path), **env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "3 configuration problems" in result.stderr, result.stderr
    assert "deployment[0].runtime_config.api_key: environment variable" in result.stderr
    assert "ATOMR_TEST_UNSET_KEY" in result.stderr
    assert "deployment[1].runtime_config.chunk_delay" in result.stderr
    assert "cluster.bind: refusing to serve on '0.0.0.0'" in result.stderr
    # model = "mock-small" names no runtime: the testkit's pattern mock-* claims it
    assert "cannot infer a runtime" not in result.stderr


MISSING_KEY = """
[cluster]
bind = "127.0.0.1:0"

[[deployment]]
name = "chat"
model = "gpt-4o-mini"
"""


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_missing_api_key_is_found_at_startup(tmp_path: Path, command: str) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(MISSING_KEY)
    env = _env(ATOMR_INFER_LOAD_PLUGINS="openai")
    env.pop("OPENAI_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "atomr_infer", command, "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1  # serve too: it never starts "serving" to crash later
    assert (
        "deployment[0].runtime_config.api_key: environment variable OPENAI_API_KEY is not set"
        in result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_check_honours_plugin_model_patterns(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(GOOD.replace('model = "mock"\nruntime = "mock"', 'model = "mock-tiny"'))
    result = _run("check", "--config", str(path), ATOMR_INFER_LOAD_PLUGINS="testkit")
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[2]
    assert row.split()[:3] == ["echo", "mock-tiny", "mock"]


@pytest.mark.slow
async def test_sigterm_does_not_wait_for_an_idle_keep_alive_connection(
    tmp_path: Path, read_banner: Callable[[trio.Process], Awaitable[str]]
) -> None:
    import signal

    path = tmp_path / "atomr.toml"
    path.write_text(
        GOOD.replace('bind = "127.0.0.1:0"', 'bind = "127.0.0.1:0"\nshutdown_grace = "30s"')
    )
    proc = await _start_serve(path)
    try:
        with trio.fail_after(60):
            url = await read_banner(proc)
            port = int(url.rsplit(":", 1)[1])
            probe = await trio.open_tcp_stream("127.0.0.1", port)  # a scraper's keep-alive
            await probe.send_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status": "ok"}'):
                answer += await probe.receive_some(4096)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):  # the grace is 30 s: only an immediate close passes
            assert await probe.receive_some(4096) == b""
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0


def test_check_refuses_an_api_key_left_empty_by_an_unset_variable(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(
        MISSING_KEY + '[deployment.runtime_config]\napi_key = "${ATOMR_TEST_UNSET_KEY:-}"\n'
    )
    result = _run("check", "--config", str(path), ATOMR_INFER_LOAD_PLUGINS="openai")
    assert result.returncode == 1
    assert "deployment[0].runtime_config.api_key: the credential is empty" in result.stderr
