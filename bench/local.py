"""Local continuous batching vs plain transformers generate, for SmolLM2-135M on this machine.

    .venv/bin/python bench/local.py [--new-tokens 64] [--levels 1,4,16] [--sequential 4]
        [--constrained] [--no-baselines]

Prints aggregate tokens/s and p50/p99 time to first token at each concurrency level,
through the torch plugin's step model served by ``LocalEngineRunner`` (continuous
batching), next to the same requests run one after another with ``model.generate``, and
next to one static ``model.generate`` call over all 16 prompts (left-padded), all in the
same process, greedy, exactly ``--new-tokens`` tokens per request (end-of-sequence
ignored on both sides so every row does the same work). ``--constrained`` adds a row at the
highest level where every other request carries a ``response_format`` json_schema (an
array of at least 64 digits, so constrained rows do the same number of steps).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import trio

from atomr_infer_core import ExecuteBatch, Message, SamplingParams, Serving
from atomr_infer_core.config import structure
from atomr_infer_runtimes._batching import LocalEngineRunner
from atomr_infer_torch import DEFAULT_DEPLOYMENTS, TorchCausalLM, TorchConfig

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "What is 12 times 12?",
    "Give me a tip for learning Python.",
    "Why is the sky blue?",
    "What is the boiling point of water?",
    "Suggest a name for a pet turtle.",
    "Summarise the plot of Cinderella.",
    "What does HTTP stand for?",
    "List two uses of a paperclip.",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
    "Describe a rainbow to a child.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


#: never complete within the bench's new tokens: constrained rows run every step
DIGITS = {
    "type": "json_schema",
    "json_schema": {
        "name": "digits",
        "schema": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 64},
    },
}


def batch_for(i: int, new_tokens: int, constrained: bool = False) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=f"b{i}",
        model="smollm2",
        messages=[Message(role="user", content=QUESTIONS[i % len(QUESTIONS)])],
        sampling=SamplingParams(temperature=0.0, max_tokens=new_tokens),
        stream=True,
        response_format=DIGITS if constrained and i % 2 else None,
        extra={"ignore_eos": True},
    )


async def engine_level(
    runner: LocalEngineRunner, level: int, total: int, new_tokens: int, constrained: bool = False
) -> tuple[float, list[float], int]:
    """``total`` requests, ``level`` in flight at once; returns (seconds, ttfts, tokens)."""
    ttfts: list[float] = []
    tokens = 0
    limit = trio.Semaphore(level)

    async def one(i: int) -> None:
        nonlocal tokens
        async with limit:
            start = trio.current_time()
            first = None
            async with runner.execute(batch_for(i, new_tokens, constrained)) as chunks:
                async for chunk in chunks:
                    if first is None:
                        first = trio.current_time() - start
                    if chunk.usage is not None:
                        tokens += chunk.usage.output_tokens
            ttfts.append(first or 0.0)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(total):
            nursery.start_soon(one, i)
    return trio.current_time() - start, ttfts, tokens


def generate_inputs(model: TorchCausalLM, indices: list[int], new_tokens: int) -> list:
    from atomr_infer_torch import render_prompt

    tok = model.tokenizer
    tok.padding_side = "left"
    texts = [render_prompt(tok, batch_for(i, new_tokens))[0] for i in indices]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def hf_generate(model: TorchCausalLM, indices: list[int], new_tokens: int) -> tuple[float, int]:
    import torch

    inputs = generate_inputs(model, indices, new_tokens)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=model.pad_id,
        )
    elapsed = time.perf_counter() - start
    return elapsed, (out.shape[1] - inputs["input_ids"].shape[1]) * len(indices)


def summarise(rounds: list[tuple[float, float, float, float]]) -> tuple[str, str, str, str]:
    """The round with the best tokens/s: (tokens/s, TTFT p50, TTFT p99, wall s)."""
    rate, p50, p99, secs = max(rounds)
    cell = (lambda v: f"{v:.3f}") if p50 >= 0 else (lambda v: "-")
    return f"{rate:.1f}", cell(p50), cell(p99), f"{secs:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--sequential", type=int, default=4, help="requests run one by one")
    parser.add_argument("--requests-at-1", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="best round is reported")
    parser.add_argument(
        "--constrained", action="store_true", help="add a half-json_schema row at the top level"
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the transformers generate rows"
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    n = args.new_tokens

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    base = DEFAULT_DEPLOYMENTS[0]
    dep = type(base)(
        name=base.name,
        model=base.model,
        runtime=base.runtime,
        runtime_config=base.runtime_config,
        serving=Serving(max_concurrent=max(levels)),
    )
    config = structure(dict(dep.runtime_config), TorchConfig)
    model = TorchCausalLM(config, weights=config.weights, name=dep.name)
    t0 = time.perf_counter()
    model.load()
    load_s = time.perf_counter() - t0
    model.model.generation_config.max_length = None
    runner = LocalEngineRunner(model, dep)
    results: dict[str, list[tuple[float, float, float, float]]] = {}

    def record(name: str, rate: float, p50: float, p99: float, secs: float) -> None:
        results.setdefault(name, []).append((rate, p50, p99, secs))
        print(f"{name}: {rate:.1f} tok/s p50 {p50:.3f} p99 {p99:.3f} {secs:.1f}s", file=sys.stderr)

    def baselines() -> None:
        secs, tokens = hf_generate(model, list(range(16)), n)
        record("generate, one static batch of 16 (left-padded)", tokens / secs, -1, -1, secs)
        seq_s, seq_tokens, ttft = 0.0, 0, []
        for i in range(args.sequential):
            first, _ = hf_generate(model, [i], 1)
            ttft.append(first)
            secs, tokens = hf_generate(model, [i], n)
            seq_s += secs
            seq_tokens += tokens
        record(
            f"generate, one after another ({args.sequential} requests)",
            seq_tokens / seq_s,
            percentile(ttft, 0.5),
            percentile(ttft, 0.99),
            seq_s,
        )

    async def everything() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await trio.to_thread.run_sync(hf_generate, model, [0], 4)  # warm-up both paths
            await engine_level(runner, 2, 2, 4)
            for _ in range(args.rounds):
                for level in sorted(levels, reverse=True):
                    total = args.requests_at_1 if level == 1 else level
                    secs, ttfts, tokens = await engine_level(runner, level, total, n)
                    record(
                        f"engine, {level} concurrent ({total} requests)",
                        tokens / secs,
                        percentile(ttfts, 0.5),
                        percentile(ttfts, 0.99),
                        secs,
                    )
                if args.constrained:
                    top = max(levels)
                    secs, ttfts, tokens = await engine_level(runner, top, top, n, True)
                    record(
                        f"engine, {top} concurrent, half json_schema ({top} requests)",
                        tokens / secs,
                        percentile(ttfts, 0.5),
                        percentile(ttfts, 0.99),
                        secs,
                    )
                if args.no_baselines:
                    continue
                # in a worker thread like the engine's steps (torch keeps one OpenMP
                # team per calling thread; both sides should pay the same)
                await trio.to_thread.run_sync(baselines)
            nursery.cancel_scope.cancel()

    trio.run(everything)

    print(
        f"# bench/local.py  {date.today()}  SmolLM2-135M-Instruct fp32, {n} new tokens, "
        f"greedy, best of {args.rounds} rounds"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}, model load {load_s:.1f}s, "
        f"step token budget {runner.step_token_budget}"
    )
    order = [f"engine, {lv} concurrent" for lv in levels] + [
        f"engine, {max(levels)} concurrent, half",
        "generate, one after",
        "generate, one static",
    ]
    names = sorted(results, key=lambda k: next(i for i, o in enumerate(order) if k.startswith(o)))
    rows = [(name, *summarise(results[name])) for name in names]
    header = ("run", "tokens/s", "TTFT p50 s", "TTFT p99 s", "wall s")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    best = {name: max(r[0] for r in rounds) for name, rounds in results.items()}
    half = next((v for k, v in best.items() if "half json_schema" in k), None)
    if half is not None:
        plain = next(v for k, v in best.items() if k.startswith(f"engine, {max(levels)} conc"))
        print(f"\nhalf json_schema at {max(levels)} concurrent: {100 * half / plain:.0f}% of plain")
    if args.no_baselines:
        return
    seq_rate = next(v for k, v in best.items() if k.startswith("generate, one after"))
    static_rate = next(v for k, v in best.items() if k.startswith("generate, one static"))
    top = next(v for k, v in best.items() if k.startswith(f"engine, {max(levels)} "))
    print(
        f"\nengine at {max(levels)} concurrent: {top / seq_rate:.1f}x sequential generate, "
        f"{100 * top / static_rate:.0f}% of the static batch. TTFT of generate one after "
        "another = time of a 1-token generate call."
    )


if __name__ == "__main__":
    main()
