"""The torch causal LM step model on a tiny random GPT-2: batching, stops, usage."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    FinishReason,
    Message,
    SamplingParams,
    Serving,
    StepModel,
    Tokens,
)
from atomr_infer_core.errors import ContextLengthExceededError
from atomr_infer_runtimes._batching import LocalEngineRunner
from atomr_infer_torch import TorchCausalLM, TorchConfig

PROMPTS = [f"the {w} {i} " * (1 + i % 4) for i, w in enumerate(["cat", "dog", "fox", "mat"] * 4)]


def _model(path: Path, **kw: object) -> TorchCausalLM:
    model = TorchCausalLM(TorchConfig(weights=str(path), device="cpu", **kw), weights=str(path))
    model.load()
    return model


def _batch(i: int, prompt: str, **sampling: object) -> ExecuteBatch:
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 12)
    return ExecuteBatch(
        request_id=f"r{i}",
        model="tiny",
        kind="completion",
        prompt=prompt,
        sampling=SamplingParams(**sampling),
    )


def _run_alone(model: TorchCausalLM, batch: ExecuteBatch) -> tuple[str, list]:
    outputs = model.step([("solo", batch)], [])
    while outputs[-1].finish_reason is None:
        outputs += model.step([], [])
    return "".join(o.text_delta for o in outputs), outputs


def test_causal_model_meets_the_protocol(tiny_gpt2: Path) -> None:
    assert isinstance(_model(tiny_gpt2), StepModel)


def test_alone_matches_transformers_generate(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    batch = _batch(0, PROMPTS[5], max_tokens=16)
    text, outputs = _run_alone(model, batch)
    ids = model.tokenizer(PROMPTS[5], return_tensors="pt")
    reference = model.model.generate(
        **ids, max_new_tokens=16, do_sample=False, pad_token_id=1, eos_token_id=0
    )
    new = reference[0, ids["input_ids"].shape[1] :].tolist()
    expected = model.tokenizer.decode([t for t in new if t != 0], skip_special_tokens=True)
    assert text == expected
    assert outputs[-1].usage.output_tokens == len(new)
    assert outputs[-1].usage.input_tokens == ids["input_ids"].shape[1]


def test_greedy_output_is_the_same_alone_and_among_15_others(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    alone = {
        i: _run_alone(model, _batch(i, p, max_tokens=10 + i))[0] for i, p in enumerate(PROMPTS)
    }
    rng = random.Random(7)
    join_at = {i: rng.randrange(0, 12) for i in range(16)}
    leave_at = {i: rng.randrange(3, 20) for i in rng.sample(range(16), 4)}
    texts = {i: "" for i in range(16)}
    finished: set[int] = set()
    left: set[int] = set()
    for step in range(60):
        joining = [
            (f"s{i}", _batch(i, PROMPTS[i], max_tokens=10 + i))
            for i in range(16)
            if join_at[i] == step
        ]
        leaving = [f"s{i}" for i, at in leave_at.items() if at == step and i not in finished]
        left.update(int(s[1:]) for s in leaving)
        for out in model.step(joining, leaving):
            i = int(out.seq_id[1:])
            texts[i] += out.text_delta
            if out.finish_reason is not None:
                finished.add(i)
        if len(finished | left) == 16:
            break
    assert model._rows == [] and model._keys == []
    for i in range(16):
        if i in left:
            assert alone[i].startswith(texts[i])
        else:
            assert texts[i] == alone[i], i
    assert finished | left == set(range(16))


async def test_concurrent_requests_through_the_engine_match_solo_runs(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    alone = {i: _run_alone(model, _batch(i, p))[0] for i, p in enumerate(PROMPTS)}
    runner = LocalEngineRunner(model, Deployment(name="tiny", model="tiny", runtime="torch"))
    results: dict[int, Tokens] = {}

    async def one(i: int) -> None:
        async with runner.execute(_batch(i, PROMPTS[i])) as chunks:
            results[i] = Tokens.from_chunks([c async for c in chunks])

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with trio.open_nursery() as requests:
            for i in range(16):
                requests.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert {i: r.text for i, r in results.items()} == alone
    assert runner.peak_batch > 1


async def test_leaving_early_frees_the_slot_and_the_cache(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    deployment = Deployment(
        name="tiny", model="tiny", runtime="torch", serving=Serving(max_concurrent=1)
    )
    runner = LocalEngineRunner(model, deployment)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with runner.execute(_batch(0, PROMPTS[0], max_tokens=100)) as chunks:
            await chunks.__anext__()
        async with runner.execute(_batch(1, PROMPTS[1], max_tokens=3)) as chunks:
            second = Tokens.from_chunks([c async for c in chunks])
        nursery.cancel_scope.cancel()
    assert second.usage.output_tokens <= 3
    assert model._rows == [] and model._mask is None


def test_stop_sequence_cuts_the_output_and_finishes_with_stop(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    full, _ = _run_alone(model, _batch(0, PROMPTS[2], max_tokens=24))
    assert len(full) > 8
    stop = full[5:8]
    cut = full[: full.index(stop)]
    text, outputs = _run_alone(model, _batch(0, PROMPTS[2], max_tokens=24, stop=[stop]))
    assert text == cut
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert outputs[-1].usage.output_tokens < 24


def test_length_finish_and_real_token_counts(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    _text, outputs = _run_alone(model, _batch(0, PROMPTS[3], max_tokens=5))
    usage = outputs[-1].usage
    assert usage.input_tokens == len(model.tokenizer(PROMPTS[3])["input_ids"])
    assert usage.output_tokens == len(outputs)
    if outputs[-1].finish_reason is FinishReason.LENGTH:
        assert usage.output_tokens == 5


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    greedy, _ = _run_alone(model, _batch(0, PROMPTS[1], max_tokens=12))
    a, _ = _run_alone(model, _batch(0, PROMPTS[1], temperature=1.5, seed=3, max_tokens=12))
    b, _ = _run_alone(model, _batch(0, PROMPTS[1], temperature=1.5, seed=3, max_tokens=12))
    k1, _ = _run_alone(model, _batch(0, PROMPTS[1], temperature=1.0, top_k=1, max_tokens=12))
    p0, _ = _run_alone(model, _batch(0, PROMPTS[1], temperature=1.0, top_p=0.0, max_tokens=12))
    assert a == b
    assert k1 == greedy == p0


def test_chat_without_a_template_uses_a_transcript(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    batch = ExecuteBatch(
        request_id="c",
        model="tiny",
        messages=[Message(role="system", content="be brief"), Message(role="user", content="hi")],
        sampling=SamplingParams(temperature=0, max_tokens=4),
    )
    expected = len(model.tokenizer("system: be brief\nuser: hi\nassistant:")["input_ids"])
    assert model.prompt_tokens(batch) == expected
    _, outputs = _run_alone(model, batch)
    assert outputs[-1].usage.input_tokens == expected


def test_a_prompt_longer_than_the_context_fails_only_its_sequence(tiny_gpt2: Path) -> None:
    model = _model(tiny_gpt2)
    outputs = model.step(
        [("long", _batch(0, "the cat " * 200)), ("ok", _batch(1, PROMPTS[0], max_tokens=2))], []
    )
    errors = {o.seq_id: o.error for o in outputs if o.error is not None}
    assert isinstance(errors["long"], ContextLengthExceededError)
    assert [o.seq_id for o in outputs if o.error is None] == ["ok"]
    assert torch.is_tensor(model._mask)


def test_rebuild_drops_every_sequence(tiny_gpt2: Path) -> None:
    from atomr_infer_core import SessionRebuildCause

    model = _model(tiny_gpt2)
    model.step([("a", _batch(0, PROMPTS[0], max_tokens=50))], [])
    model.rebuild(SessionRebuildCause.MANUAL)
    assert model._rows == []
    text, _ = _run_alone(model, _batch(0, PROMPTS[0], max_tokens=3))
    assert isinstance(text, str)


SYSTEM = "system: you are a tiny model for tests, answer with care and be brief.\n"


def test_shared_prompt_prefix_is_cached_and_output_is_unchanged(tiny_gpt2: Path) -> None:
    plain = _model(tiny_gpt2, prefix_cache=False)
    cached = _model(tiny_gpt2)
    prompts = [SYSTEM + f"user: {p}" for p in PROMPTS[:6]]
    alone = [_run_alone(plain, _batch(i, p, max_tokens=10))[0] for i, p in enumerate(prompts)]
    texts = [""] * 6
    joining = [(f"s{i}", _batch(i, p, max_tokens=10)) for i, p in enumerate(prompts[:4])]
    full_cost = cached.prompt_tokens(joining[0][1])
    outputs = cached.step(joining, [])
    (prefix,) = cached._prefixes
    assert len(prefix) >= 8
    # later joiners reuse the cached prefix: their prefill cost drops by its length
    late = [(f"s{i}", _batch(i, p, max_tokens=10)) for i, p in enumerate(prompts) if i >= 4]
    assert cached.prompt_tokens(late[0][1]) == len(cached.encode(late[0][1])) - len(prefix)
    assert full_cost == len(cached.encode(joining[0][1]))
    outputs += cached.step(late, [])
    while cached._rows:
        outputs += cached.step([], [])
    for out in outputs:
        texts[int(out.seq_id[1:])] += out.text_delta
    assert texts == alone
    assert len(cached._prefixes) == 1


def test_a_prefix_shared_with_an_earlier_lone_request_is_cached(tiny_gpt2: Path) -> None:
    """Requests that join one at a time (in different steps) still share their system
    prompt: the second caches the prefix it shares with the first, the third reuses it."""
    plain = _model(tiny_gpt2, prefix_cache=False)
    cached = _model(tiny_gpt2)
    prompts = [SYSTEM + f"user: {p}" for p in PROMPTS[:3]]
    batches = [_batch(i, p, max_tokens=10) for i, p in enumerate(prompts)]
    alone = [_run_alone(plain, b)[0] for b in batches]
    first = _run_alone(cached, batches[0])[0]
    assert not cached._prefixes  # nothing to share with yet
    second = _run_alone(cached, batches[1])[0]
    (prefix,) = cached._prefixes
    assert len(prefix) >= len(cached.encode(_batch(9, SYSTEM))) - 1
    assert cached.prompt_tokens(batches[2]) == len(cached.encode(batches[2])) - len(prefix)
    third = _run_alone(cached, batches[2])[0]
    assert [first, second, third] == alone
    assert len(cached._prefixes) == 1


def test_unset_sampling_fields_take_the_deployments_defaults(tiny_gpt2: Path) -> None:
    greedy, _ = _run_alone(_model(tiny_gpt2), _batch(0, PROMPTS[1]))
    unset = ExecuteBatch(
        request_id="r0",
        model="tiny",
        kind="completion",
        prompt=PROMPTS[1],
        sampling=SamplingParams(max_tokens=12, seed=5),
    )
    # an unset request is greedy unless the deployment says otherwise: default_top_k = 1
    # keeps it greedy at temperature 1; temperature 1 alone with the same seed samples
    # something else
    assert _run_alone(_model(tiny_gpt2), unset)[0] == greedy
    assert (
        _run_alone(_model(tiny_gpt2, default_temperature=1.0, default_top_k=1), unset)[0] == greedy
    )
    assert _run_alone(_model(tiny_gpt2, default_temperature=1.0), unset)[0] != greedy
