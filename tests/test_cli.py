"""``python -m atomr_infer``: plugins, check, status, serve's refusals, export-onnx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "echo" in result.stdout
    assert "runtime=mock" in result.stdout


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
