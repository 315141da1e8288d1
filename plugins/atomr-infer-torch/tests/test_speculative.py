"""Prompt-lookup speculative decoding: exactly plain greedy text, fewer steps when the
output copies its context."""

from __future__ import annotations

from pathlib import Path

from atomr_infer_core import ExecuteBatch, SamplingParams
from atomr_infer_torch import TorchCausalLM, TorchConfig
from atomr_infer_torch._causal import lookup_draft

# repetitive prompts: a random tiny model greedily falls into loops the lookup predicts
PROMPTS = [
    f"the {w} sat on the mat. the {w} sat on the " * (1 + i % 2)
    for i, w in enumerate(["cat", "dog", "fox", "owl", "bee"])
]


def _model(path: Path, **kw: object) -> TorchCausalLM:
    model = TorchCausalLM(TorchConfig(device="cpu", **kw), weights=str(path))
    model.load()
    return model


def _batch(i: int, **sampling: object) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=f"r{i}",
        model="tiny",
        kind="completion",
        prompt=PROMPTS[i],
        sampling=SamplingParams(**{"temperature": 0.0, "max_tokens": 24, **sampling}),
    )


def _run(model: TorchCausalLM, joins: dict[int, list[ExecuteBatch]]) -> tuple[dict[str, str], int]:
    """Batches joining at the given steps; (text per sequence, steps taken)."""
    texts: dict[str, str] = {}
    step = 0
    while step == 0 or model._rows or any(s >= step for s in joins):
        joining = [(b.request_id, b) for b in joins.get(step, [])]
        for out in model.step(joining, []):
            texts[out.seq_id] = texts.get(out.seq_id, "") + out.text_delta
        step += 1
    return texts, step


def test_lookup_draft_copies_what_followed_the_last_tokens() -> None:
    assert lookup_draft([1, 2, 3, 9, 1, 2], 2) == [3, 9]
    assert lookup_draft([1, 2, 3, 9, 1, 2], 5) == [3, 9, 1, 2]
    assert lookup_draft([5, 6, 7], 3) == []
    assert lookup_draft([4, 4], 3) == [4]
    assert lookup_draft([1, 2, 1], 0) == []


def test_speculative_text_is_plain_greedy_text_in_fewer_steps(tiny_gpt2: Path) -> None:
    plain = _model(tiny_gpt2)
    fast = _model(tiny_gpt2, speculative="prompt_lookup", speculative_tokens=4)
    joins = {0: [_batch(0), _batch(1)], 2: [_batch(2), _batch(3, max_tokens=9)], 5: [_batch(4)]}
    expected, plain_steps = _run(plain, joins)
    got, fast_steps = _run(fast, joins)
    assert got == expected
    assert fast.accepted > 0 and fast.drafted >= fast.accepted
    assert fast_steps < plain_steps
    assert fast._rows == [] and fast._mask is None


def test_sampled_and_logprob_sequences_decode_one_token_at_a_time(tiny_gpt2: Path) -> None:
    plain = _model(tiny_gpt2)
    fast = _model(tiny_gpt2, speculative="prompt_lookup")
    joins = {0: [_batch(0, temperature=1.0, seed=4), _batch(1, logprobs=True), _batch(2)]}
    assert _run(fast, joins)[0] == _run(plain, joins)[0]
