"""Local continuous batching vs plain transformers generate, for SmolLM2-135M on this machine.

    .venv/bin/python bench/local.py [--new-tokens 64] [--levels 1,4,16] [--sequential 4]
        [--constrained] [--no-baselines] [--device cpu|cuda|auto]
    .venv/bin/python bench/local.py --cache-aware [--waves 4] [--wave-size 2] [--device ...]

Prints aggregate tokens/s and p50/p99 time to first token at each concurrency level,
through the torch plugin's step model served by ``LocalEngineRunner`` (continuous
batching), next to the same requests run one after another with ``model.generate``, and
next to one static ``model.generate`` call over all 16 prompts (left-padded), all in the
same process, greedy, exactly ``--new-tokens`` tokens per request (end-of-sequence
ignored on both sides so every row does the same work). ``--constrained`` adds a row at the
highest level where every other request carries a ``response_format`` json_schema (an
array of at least 64 digits, so constrained rows do the same number of steps).
``--device`` goes to the torch runtime's ``runtime_config.device`` (``cuda`` is refused
up front when torch sees no GPU; ``auto`` takes the GPU when there is one, in bfloat16).

``--cache-aware`` measures time to first token on a deployment of 2 replicas of the
embedded smollm2 whose requests share one ~300-token system prompt, once with
``serving.routing = "cache_aware"`` and once with ``"least_outstanding"``: ``--waves``
waves of ``--wave-size`` requests sent together (each wave after the last one ended),
after one warm-up request per replica. A replica caches a prompt prefix that two
requests joining one step share (or reuses one it cached), so the routing decides
whether requests sharing the system prompt meet on a replica that holds it.
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

import attrs
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    Message,
    ReplicaRouting,
    SamplingParams,
    Serving,
)
from atomr_infer_core.config import structure
from atomr_infer_runtimes import Cluster, open_cluster
from atomr_infer_runtimes._batching import LocalEngineRunner
from atomr_infer_torch import DEFAULT_DEPLOYMENTS, TorchCausalLM, TorchConfig, _plugin

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


#: the system prompt every ``--cache-aware`` request carries (about 300 SmolLM2 tokens)
SYSTEM_PROMPT = (
    "You are the support assistant of Northwind Outfitters, a shop for hiking, camping "
    "and climbing gear with stores in Lyon, Grenoble and Annecy and a web shop that ships "
    "across the European Union. Answer in at most three short sentences, in the language "
    "of the question, politely and without marketing phrases. Rules: never promise a "
    "delivery date; say that orders placed before 2 pm on a working day usually leave the "
    "warehouse the same day and that tracking links arrive by e-mail. Returns are free "
    "within 30 days for unused items in their original packaging; worn shoes and opened "
    "gas cartridges cannot be returned. Repairs of tents, backpacks and down jackets are "
    "done in the Grenoble workshop and take two to three weeks; the customer pays only "
    "the parts. Rental of tents, stoves and via ferrata kits is possible in every store "
    "for one to fourteen days, with a deposit of 150 euros. Members of the Northwind "
    "club get 10 percent off full-price items, free sharpening of ice axes and crampons, "
    "and invitations to monthly route talks. Payment by card, bank transfer or gift card; "
    "no cash on delivery. If a question is about safety on the mountain (weather, "
    "avalanches, route conditions), recommend the local guides' office and the official "
    "forecast instead of giving advice yourself. If you do not know the answer, say so and "
    "give the address support@northwind.example and the phone line, open Monday to "
    "Saturday from 9 am to 6 pm."
)


def cache_batch(i: int, new_tokens: int) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=f"c{i}",
        model="smollm2",
        messages=[
            Message(role="system", content=SYSTEM_PROMPT),
            Message(role="user", content=QUESTIONS[i % len(QUESTIONS)]),
        ],
        sampling=SamplingParams(temperature=0.0, max_tokens=new_tokens),
        stream=True,
    )


async def cache_variant(
    routing: ReplicaRouting, device: str, waves: int, wave_size: int, new_tokens: int
) -> tuple[list[float], list[int], int]:
    """TTFTs of ``waves`` waves on 2 replicas routed by ``routing``; also each replica's
    cached prefixes and the system prompt's tokens."""
    base = DEFAULT_DEPLOYMENTS[0]
    dep = Deployment(
        name=base.name,
        model=base.model,
        runtime=base.runtime,
        runtime_config={**base.runtime_config, "device": device},
        replicas=2,
        serving=Serving(max_concurrent=max(2, wave_size), routing=routing),
    )
    ttfts: list[float] = []

    async def one(cluster: Cluster, batch: ExecuteBatch, out: list[float]) -> None:
        start = trio.current_time()
        first = None
        async with cluster.execute(batch) as chunks:
            async for _chunk in chunks:
                if first is None:
                    first = trio.current_time() - start
        out.append(first or 0.0)

    async with open_cluster([dep], plugins=[_plugin], load_entry_points=False) as cluster:
        async with trio.open_nursery() as nursery:  # warm-up: one request per replica
            for i in range(2):
                warm = without_system(cache_batch(100 + i, 2))
                nursery.start_soon(one, cluster, warm, [])
        for wave in range(waves):
            async with trio.open_nursery() as nursery:
                for j in range(wave_size):
                    batch = cache_batch(wave * wave_size + j, new_tokens)
                    nursery.start_soon(one, cluster, batch, ttfts)
        runtime = cluster.find_runtime(dep.name)
        assert runtime is not None
        models = [slot.runner.model for slot in runtime.replicas]  # type: ignore[attr-defined]
        system = len(models[0].tokenizer(SYSTEM_PROMPT)["input_ids"])
        return ttfts, [len(m._prefixes) for m in models], system


def without_system(batch: ExecuteBatch) -> ExecuteBatch:
    """``batch`` without its system prompt (warm-up requests must not seed the cache)."""
    return attrs.evolve(batch, messages=batch.messages[1:] if batch.messages else None)


def cache_aware_main(args: argparse.Namespace) -> None:
    import torch

    rows = []
    for routing in (ReplicaRouting.CACHE_AWARE, ReplicaRouting.LEAST_OUTSTANDING):
        ttfts, cached, system = trio.run(
            cache_variant, routing, args.device, args.waves, args.wave_size, args.new_tokens
        )
        rows.append((routing.value, ttfts, cached))
        print(f"{routing.value}: {[round(t, 3) for t in ttfts]}", file=sys.stderr)
    print(
        f"# bench/local.py --cache-aware  {date.today()}  SmolLM2-135M-Instruct on "
        f"{args.device}, 2 replicas, system prompt {system} tokens, {args.waves} waves of "
        f"{args.wave_size} requests, {args.new_tokens} new tokens, greedy"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}"
    )
    header = ("serving.routing", "requests", "TTFT p50 s", "TTFT p95 s", "prefixes cached")
    table = [header, tuple("-" * len(h) for h in header)]
    for name, ttfts, cached in rows:
        table.append(
            (
                name,
                str(len(ttfts)),
                f"{percentile(ttfts, 0.5):.3f}",
                f"{percentile(ttfts, 0.95):.3f}",
                " + ".join(str(c) for c in cached),
            )
        )
    widths = [max(len(r[k]) for r in table) for k in range(5)]
    for row in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def generate_inputs(model: TorchCausalLM, indices: list[int], new_tokens: int) -> list:
    from atomr_infer_torch import render_prompt

    tok = model.tokenizer
    tok.padding_side = "left"
    texts = [render_prompt(tok, batch_for(i, new_tokens))[0] for i in indices]
    inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return inputs.to(model.device)


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
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="runtime_config.device of the torch runtime (auto: the GPU when there is one)",
    )
    parser.add_argument(
        "--cache-aware",
        action="store_true",
        help="TTFT on 2 replicas sharing a system prompt: cache_aware vs least_outstanding",
    )
    parser.add_argument("--waves", type=int, default=4, help="--cache-aware: request waves")
    parser.add_argument(
        "--wave-size", type=int, default=2, help="--cache-aware: requests sent together"
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    n = args.new_tokens

    import torch
    from transformers.utils import logging as hf_logging

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda: torch {torch.__version__} sees no usable GPU "
            f"({torch.cuda.device_count()} devices; a CPU-only wheel, or no driver); "
            "use --device cpu or auto"
        )
    hf_logging.set_verbosity_error()
    if args.cache_aware:
        cache_aware_main(args)
        return
    base = DEFAULT_DEPLOYMENTS[0]
    dep = type(base)(
        name=base.name,
        model=base.model,
        runtime=base.runtime,
        runtime_config={**base.runtime_config, "device": args.device},
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
        f"# bench/local.py  {date.today()}  SmolLM2-135M-Instruct on {model.device} "
        f"({str(next(model.model.parameters()).dtype).removeprefix('torch.')}), {n} new "
        f"tokens, greedy, best of {args.rounds} rounds"
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
