"""``python -m atomr_infer export-onnx``: what it prints serves the folder it wrote; a bad
source is a message, not a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from atomr_infer._cli import main
from atomr_infer_core import RunnerContext
from atomr_infer_core.config import load_config, structure
from atomr_infer_onnx import OnnxCausalLM, OnnxConfig
from atomr_infer_onnx._plugin import create

pytestmark = pytest.mark.slow


def test_export_prints_a_deployment_that_serves_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("atomr_infer_torch")
    from atomr_infer_torch.testing import build_tiny_gpt2

    gpt2 = build_tiny_gpt2(tmp_path / "gpt2")
    assert main(["export-onnx", str(gpt2), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    snippet = printed.split("serve it with:", 1)[1]
    parsed = tomllib.loads(snippet)
    assert parsed["deployment"][0]["runtime"] == "onnx"
    (dep,) = load_config(parsed).deployments
    model = create(dep, structure(dict(dep.runtime_config), OnnxConfig), RunnerContext())
    assert isinstance(model, OnnxCausalLM)
    model.load()
    assert model.kv_cache


def test_a_bad_source_is_a_message_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("atomr_infer_torch")
    assert main(["export-onnx", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "pypi:" in err
    assert "Traceback" not in err
