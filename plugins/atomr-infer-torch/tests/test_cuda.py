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
