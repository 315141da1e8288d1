"""Execution providers: what is in use is what gets reported (no torch needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from atomr_infer_core.errors import ConfigError
from atomr_infer_onnx import OnnxConfig, OnnxEncoder, OnnxTask, create, open_session


def _matmul_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1, 0, 0, 1, 1, 1])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_session_reports_the_providers_in_use_and_a_gpu_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _matmul_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.INFO, logger="atomr_infer.onnx"):
        session, in_use, note = open_session(
            path, ["CUDAExecutionProvider", "CPUExecutionProvider"], name="m"
        )
    (out,) = session.run(["y"], {"x": np.ones((4, 3), dtype=np.float32)})
    assert out.tolist() == [[2.0, 2.0]] * 4
    assert in_use == tuple(session.get_providers())
    if "CUDAExecutionProvider" not in in_use:
        assert note is not None and "CUDAExecutionProvider" in note and "CPU" in note
        assert any(
            r.levelno == logging.WARNING and "requested" in r.message for r in caplog.records
        )
    assert any("execution providers in use" in r.message for r in caplog.records)


def test_cpu_only_request_has_no_fallback_note(tmp_path: Path) -> None:
    path = _matmul_model(tmp_path / "m.onnx")
    _, in_use, note = open_session(path, ["CPUExecutionProvider"], name="m")
    assert in_use == ("CPUExecutionProvider",)
    assert note is None
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_missing_model_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    from atomr_infer_core import Deployment, RunnerContext

    dep = Deployment(name="x", model=str(tmp_path / "nothing"), runtime="onnx")
    with pytest.raises(ConfigError, match=r"runtime_config.path: .*export-onnx"):
        create(dep, OnnxConfig(), RunnerContext())


def test_task_auto_reads_the_graph_outputs(tmp_path: Path) -> None:
    from atomr_infer_core import Deployment, RunnerContext

    path = _matmul_model(tmp_path / "model.onnx")
    dep = Deployment(name="x", model=str(tmp_path), runtime="onnx")
    model = create(dep, OnnxConfig(task=OnnxTask.AUTO), RunnerContext())
    assert isinstance(model, OnnxEncoder)
    assert path.exists()


def test_registering_imports_neither_onnxruntime_nor_the_runtime_layer() -> None:
    import subprocess
    import sys

    code = (
        "import sys, atomr_infer_onnx._plugin as p\n"
        "p.register_runtimes(lambda plugin: None)\n"
        "bad = [m for m in ('onnxruntime', 'torch', 'transformers', 'atomr_infer_runtimes') "
        "if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
