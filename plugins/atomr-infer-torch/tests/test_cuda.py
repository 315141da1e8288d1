"""The CUDA path of the torch runtime: runs where a GPU is present, skipped otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atomr_infer_core import ExecuteBatch, Message, SamplingParams, TransportKind
from atomr_infer_torch import TorchCausalLM, TorchConfig

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to torch on this machine"
)


def _run(model: TorchCausalLM, batches: list[ExecuteBatch]) -> list[str]:
    texts = [""] * len(batches)
    outputs = model.step([(f"s{i}", b) for i, b in enumerate(batches)], [])
    while True:
        for out in outputs:
            texts[int(out.seq_id[1:])] += out.text_delta
        if not model._rows:
            return texts
        outputs = model.step([], [])


def _chat(i: int, **kw: object) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=f"r{i}",
        model="tiny",
        messages=[Message(role="user", content=f"the cat {i} sat")],
        sampling=SamplingParams(temperature=0.0, max_tokens=40),
        **kw,
    )


def test_auto_picks_the_gpu_in_bfloat16_and_decodes_with_constraints(tiny_gpt2: Path) -> None:
    model = TorchCausalLM(TorchConfig(device="auto"), weights=str(tiny_gpt2))
    model.load()
    assert model.device == "cuda:0" and model.transport_kind is TransportKind.LOCAL_GPU
    assert next(model.model.parameters()).dtype is torch.bfloat16
    schema = {"type": "object", "properties": {"k": {"enum": ["a", "b"]}}, "required": ["k"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "k", "schema": schema}}
    free, constrained = _run(model, [_chat(0), _chat(1, response_format=fmt)])
    assert json.loads(constrained)["k"] in ("a", "b")
    assert isinstance(free, str)


def test_float32_on_the_gpu_matches_the_cpu_greedy_text(tiny_gpt2: Path) -> None:
    cpu = TorchCausalLM(TorchConfig(device="cpu"), weights=str(tiny_gpt2))
    gpu = TorchCausalLM(TorchConfig(device="cuda:0", dtype="float32"), weights=str(tiny_gpt2))
    cpu.load()
    gpu.load()
    batches = [_chat(i) for i in range(4)]
    assert _run(gpu, batches) == _run(cpu, batches)


def _long_chat(i: int) -> ExecuteBatch:
    """A chat request whose prompt takes most of the tiny model's 128 positions."""
    return ExecuteBatch(
        request_id=f"long{i}",
        model="tiny",
        messages=[Message(role="user", content=f"the cat {i} sat on the mat " * 12)],
        sampling=SamplingParams(temperature=0.0, max_tokens=4),
    )


def test_really_running_out_of_gpu_memory_fails_the_step_and_the_next_one_runs(
    tiny_gpt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caching allocator is capped at what it holds after loading (the tiny model's
    weights sit in small-block segments), so a prefill of 16 long prompts, whose logits
    and attention need large blocks, really fails to allocate. Every sequence of that
    step fails typed, the cached memory is released; with the cap lifted the same 16
    prefill and decode on the same model. (The engine path around it is tested on the
    CPU in test_out_of_memory.py.)"""
    from atomr_infer_core.errors import DeviceOutOfMemoryError

    model = TorchCausalLM(
        TorchConfig(device="cuda:0", dtype="float32", prefix_cache=False),
        weights=str(tiny_gpt2),
    )
    model.load()
    released: list[None] = []
    real_empty_cache = torch.cuda.empty_cache

    def empty_cache() -> None:
        released.append(None)
        real_empty_cache()

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    joining = [(f"s{i}", _long_chat(i)) for i in range(16)]
    assert all(len(model.encode(b)) < 128 for _, b in joining)
    total = torch.cuda.get_device_properties(0).total_memory
    real_empty_cache()
    torch.cuda.set_per_process_memory_fraction(torch.cuda.memory_reserved(0) / total, 0)
    try:
        outputs = model.step(joining, [])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert [o.seq_id for o in outputs] == [s for s, _ in joining]
    assert all(isinstance(o.error, DeviceOutOfMemoryError) for o in outputs)
    assert "serving.max_concurrent" in str(outputs[0].error)
    assert released and model._rows == []
    cpu = TorchCausalLM(TorchConfig(device="cpu", prefix_cache=False), weights=str(tiny_gpt2))
    cpu.load()
    batches = [b for _, b in joining]
    assert _run(model, batches) == _run(cpu, batches)
