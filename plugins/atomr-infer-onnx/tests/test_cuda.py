"""The CUDA path of the onnx runtime: runs where onnxruntime offers CUDAExecutionProvider,
skipped otherwise (the CPU wheel, or onnxruntime-gpu without a GPU build)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from atomr_infer_core import ExecuteBatch, SamplingParams, TransportKind
from atomr_infer_onnx import OnnxCausalLM, OnnxConfig

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="this onnxruntime build has no CUDAExecutionProvider "
    "(install atomr-infer-onnx[gpu] on a machine with a GPU)",
)

GPU = ("CUDAExecutionProvider", "CPUExecutionProvider")
PROMPTS = ["the cat ", "the quick brown fox jumps ", "hello world, this is ", "paris is the "]


def _model(path: Path, providers: tuple[str, ...]) -> OnnxCausalLM:
    model = OnnxCausalLM(OnnxConfig(path=str(path), providers=providers), path=str(path))
    model.load()
    return model


def _greedy_batch(model: OnnxCausalLM) -> list[str]:
    batches = [
        (
            f"s{i}",
            ExecuteBatch(
                request_id=f"r{i}",
                model="tiny",
                kind="completion",
                prompt=p,
                sampling=SamplingParams(temperature=0.0, max_tokens=16),
            ),
        )
        for i, p in enumerate(PROMPTS)
    ]
    texts = [""] * len(batches)
    outputs = model.step(batches, [])
    while True:
        for out in outputs:
            assert out.error is None, out.error
            texts[int(out.seq_id[1:])] += out.text_delta
        if not model._rows:
            return texts
        outputs = model.step([], [])


def test_cuda_is_selected_or_the_fallback_is_reported(tiny_models: dict[str, Path]) -> None:
    """onnxruntime-gpu lists CUDA even where its libraries cannot load and then runs on
    the CPU: either the session really uses CUDA (and says LOCAL_GPU), or the health
    report names the fallback and why."""
    model = _model(tiny_models["gpt2-onnx"], GPU)
    health = model.health()
    assert health["execution_providers"] == list(model.execution_providers)
    if "CUDAExecutionProvider" in model.execution_providers:
        assert model.execution_providers[0] == "CUDAExecutionProvider"
        assert model.transport_kind is TransportKind.LOCAL_GPU
        assert health["provider_fallback"] is None
    else:
        assert model.transport_kind is TransportKind.LOCAL_CPU
        note = health["provider_fallback"]
        assert note is not None and "could not load CUDA" in note


def test_a_gpu_provider_not_in_use_is_always_reported(tiny_models: dict[str, Path]) -> None:
    """Ask for TensorRT first: whatever this machine can load, every requested GPU
    provider that is not in use is named in the fallback note, and none is when all are."""
    wanted = ("TensorrtExecutionProvider", *GPU)
    model = _model(tiny_models["gpt2-onnx"], wanted)
    missing = [p for p in wanted[:2] if p not in model.execution_providers]
    note = model.health()["provider_fallback"]
    if missing:
        assert note is not None and all(p in note for p in missing)
    else:
        assert note is None


@pytest.mark.parametrize("export", ["gpt2-onnx", "gpt2-onnx-nokv"])
def test_greedy_on_cuda_matches_greedy_on_the_cpu(
    tiny_models: dict[str, Path], export: str
) -> None:
    gpu = _model(tiny_models[export], GPU)
    if "CUDAExecutionProvider" not in gpu.execution_providers:
        pytest.skip(f"CUDA listed but not loadable here: {gpu.provider_fallback}")
    cpu = _model(tiny_models[export], ("CPUExecutionProvider",))
    assert _greedy_batch(gpu) == _greedy_batch(cpu)
