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


@pytest.mark.parametrize(("graph", "kv_cache"), [("gpt2-onnx", True), ("gpt2-onnx-nokv", False)])
def test_greedy_tokens_match_torch_on_tiny_gpt2(
    tiny_models: dict[str, Path], graph: str, kv_cache: bool
) -> None:
    from atomr_infer_torch import TorchCausalLM, TorchConfig

    torch_model = TorchCausalLM(TorchConfig(device="cpu"), weights=str(tiny_models["gpt2"]))
    torch_model.load()
    onnx_model = _onnx(OnnxCausalLM, tiny_models[graph])
    assert onnx_model.kv_cache is kv_cache
    for prompt in PROMPTS:
        assert _greedy(onnx_model, prompt) == _greedy(torch_model, prompt)
    assert onnx_model._rows == [] and onnx_model._mask is None


@pytest.mark.parametrize("graph", ["gpt2-onnx", "gpt2-onnx-nokv"])
async def test_onnx_models_serve_through_the_engine(
    tiny_models: dict[str, Path], graph: str
) -> None:
    lm = _onnx(OnnxCausalLM, tiny_models[graph])
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


def test_kv_cache_batch_with_random_joins_and_leaves_matches_solo_runs(
    tiny_models: dict[str, Path],
) -> None:
    import random

    lm = _onnx(OnnxCausalLM, tiny_models["gpt2-onnx"])
    prompts = [f"the {w} {i} " * (1 + i % 3) for i, w in enumerate(["cat", "dog", "fox"] * 3)]
    alone = [_greedy(lm, p, 6 + i) for i, p in enumerate(prompts)]
    rng = random.Random(3)
    join_at = [rng.randrange(0, 8) for _ in prompts]
    leave_at = {i: rng.randrange(2, 10) for i in rng.sample(range(len(prompts)), 3)}
    texts = [""] * len(prompts)
    ended: set[int] = set()

    def batch(i: int) -> ExecuteBatch:
        return ExecuteBatch(
            request_id=f"r{i}",
            model="tiny",
            kind="completion",
            prompt=prompts[i],
            sampling=SamplingParams(temperature=0, max_tokens=6 + i),
        )

    for step in range(40):
        joining = [(f"s{i}", batch(i)) for i, at in enumerate(join_at) if at == step]
        leaving = [f"s{i}" for i, at in leave_at.items() if at == step and i not in ended]
        ended.update(int(s[1:]) for s in leaving)
        for out in lm.step(joining, leaving):
            i = int(out.seq_id[1:])
            texts[i] += out.text_delta
            if out.finish_reason is not None:
                ended.add(i)
        if len(ended) == len(prompts):
            break
    for i, text in enumerate(texts):
        if i in leave_at:
            assert alone[i].startswith(text)
        else:
            assert text == alone[i]
    assert lm._rows == [] and lm._keys is None


def test_unset_sampling_is_greedy_on_onnx_and_torch_alike(tiny_models: dict[str, Path]) -> None:
    from atomr_infer_torch import TorchCausalLM, TorchConfig

    def unset(prompt: str) -> ExecuteBatch:
        return ExecuteBatch(
            request_id="u",
            model="tiny",
            kind="completion",
            prompt=prompt,
            sampling=SamplingParams(max_tokens=12, seed=7),
        )

    def run(model: StepModel, batch: ExecuteBatch) -> str:
        outputs = model.step([("u", batch)], [])
        while outputs[-1].finish_reason is None:
            outputs += model.step([], [])
        return "".join(o.text_delta for o in outputs)

    torch_model = TorchCausalLM(TorchConfig(device="cpu"), weights=str(tiny_models["gpt2"]))
    torch_model.load()
    onnx_model = _onnx(OnnxCausalLM, tiny_models["gpt2-onnx"])
    path = str(tiny_models["gpt2-onnx"])
    sampling = OnnxCausalLM(
        OnnxConfig(path=path, providers=("CPUExecutionProvider",), default_temperature=1.0),
        path=path,
    )
    sampling.load()
    for prompt in PROMPTS:
        greedy = _greedy(torch_model, prompt)
        assert run(onnx_model, unset(prompt)) == greedy
        assert run(torch_model, unset(prompt)) == greedy
    assert any(run(sampling, unset(p)) != _greedy(torch_model, p) for p in PROMPTS)
