"""The onnx runtime agrees with the torch runtime on tiny models exported by export_onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    RequestKind,
    SamplingParams,
    StepModel,
    Tokens,
)
from atomr_infer_onnx import OnnxCausalLM, OnnxConfig, OnnxEncoder
from atomr_infer_runtimes._batching import LocalEngineRunner

pytestmark = pytest.mark.slow

TEXTS = ["the quick brown fox", "a cat sat on the mat and looked at the dog", "hello"]
PROMPTS = ["the cat ", "the quick brown fox jumps ", "hello world, this is ", "paris is the "]


def _onnx(cls: type, path: Path) -> OnnxCausalLM | OnnxEncoder:
    model = cls(OnnxConfig(path=str(path), providers=("CPUExecutionProvider",)), path=str(path))
    model.load()
    return model


def test_embeddings_match_torch_within_1e_4(tiny_models: dict[str, Path]) -> None:
    from atomr_infer_torch import TorchConfig, TorchEncoder

    torch_model = TorchEncoder(
        TorchConfig(device="cpu", task="embed"), weights=str(tiny_models["encoder"])
    )
    torch_model.load()
    onnx_model = _onnx(OnnxEncoder, tiny_models["encoder-onnx"])
    assert isinstance(onnx_model, StepModel)
    a = np.array(torch_model.embed(TEXTS))
    b = np.array(onnx_model.embed(TEXTS))
    assert a.shape == b.shape == (3, 32)
    assert np.abs(a - b).max() < 1e-4
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0)
    assert onnx_model.execution_providers == ("CPUExecutionProvider",)


def _greedy(model: StepModel, prompt: str, n: int = 12) -> str:
    batch = ExecuteBatch(
        request_id="g",
        model="tiny",
        kind="completion",
        prompt=prompt,
        sampling=SamplingParams(temperature=0, max_tokens=n),
    )
    outputs = model.step([("g", batch)], [])
    while outputs[-1].finish_reason is None:
        outputs += model.step([], [])
    return "".join(o.text_delta for o in outputs)


def test_greedy_tokens_match_torch_on_tiny_gpt2(tiny_models: dict[str, Path]) -> None:
    from atomr_infer_torch import TorchCausalLM, TorchConfig

    torch_model = TorchCausalLM(TorchConfig(device="cpu"), weights=str(tiny_models["gpt2"]))
    torch_model.load()
    onnx_model = _onnx(OnnxCausalLM, tiny_models["gpt2-onnx"])
    for prompt in PROMPTS:
        assert _greedy(onnx_model, prompt) == _greedy(torch_model, prompt)


async def test_onnx_models_serve_through_the_engine(tiny_models: dict[str, Path]) -> None:
    lm = _onnx(OnnxCausalLM, tiny_models["gpt2-onnx"])
    solo = {p: _greedy(lm, p, 8) for p in PROMPTS}
    runner = LocalEngineRunner(lm, Deployment(name="tiny", model="tiny", runtime="onnx"))
    results: dict[str, str] = {}

    async def one(prompt: str) -> None:
        batch = ExecuteBatch(
            request_id=prompt,
            model="tiny",
            kind=RequestKind.COMPLETION,
            prompt=prompt,
            sampling=SamplingParams(temperature=0, max_tokens=8),
        )
        async with runner.execute(batch) as chunks:
            results[prompt] = Tokens.from_chunks([c async for c in chunks]).text

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with trio.open_nursery() as requests:
            for p in PROMPTS:
                requests.start_soon(one, p)
        nursery.cancel_scope.cancel()
    assert results == solo
    assert runner.health()["execution_providers"] == ["CPUExecutionProvider"]
