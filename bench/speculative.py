"""Prompt-lookup speculative decoding vs plain greedy decoding on SmolLM2-135M.

    .venv/bin/python bench/speculative.py [--new-tokens 96] [--concurrent 4] [--rounds 2]

An extraction prompt that copies from its input (repeat a paragraph, list its names): the
torch step model with ``speculative = "prompt_lookup"`` against the same model without,
``--concurrent`` sequences in one batch, greedy. Prints tokens/s of each, the speedup, the
draft acceptance, and whether the texts are identical (they must be).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from atomr_infer_core import ExecuteBatch, Message, SamplingParams
from atomr_infer_core.config import structure
from atomr_infer_torch import DEFAULT_DEPLOYMENTS, TorchCausalLM, TorchConfig

PARAGRAPH = (
    "The meeting on Tuesday was attended by Alice Martin from accounting, Bob Chen from "
    "engineering, Carla Diaz from sales and David Okafor from legal. They agreed to move "
    "the product launch from March to May, to hire two more engineers, and to review the "
    "budget again at the end of the quarter."
)
TASKS = [
    "Repeat the following text exactly, word for word:\n\n",
    "Copy this paragraph without changing anything:\n\n",
    "Quote the text below verbatim:\n\n",
    "Rewrite the following text exactly as it is:\n\n",
]


def run(model: TorchCausalLM, concurrent: int, new_tokens: int) -> tuple[float, list[str]]:
    batches = [
        ExecuteBatch(
            request_id=f"s{i}",
            model="smollm2",
            messages=[Message(role="user", content=TASKS[i % len(TASKS)] + PARAGRAPH)],
            sampling=SamplingParams(temperature=0.0, max_tokens=new_tokens),
        )
        for i in range(concurrent)
    ]
    texts = {b.request_id: "" for b in batches}
    tokens = 0
    start = time.perf_counter()
    outputs = model.step([(b.request_id, b) for b in batches], [])
    while True:
        for out in outputs:
            texts[out.seq_id] += out.text_delta
            if out.usage is not None:
                tokens += out.usage.output_tokens
        if not model._rows:
            break
        outputs = model.step([], [])
    return tokens / (time.perf_counter() - start), [texts[b.request_id] for b in batches]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="best round is reported")
    args = parser.parse_args()
    import torch

    base = structure(dict(DEFAULT_DEPLOYMENTS[0].runtime_config), TorchConfig)
    plain = TorchCausalLM(base, weights=base.weights, name="plain")
    fast_config = structure(
        {**DEFAULT_DEPLOYMENTS[0].runtime_config, "speculative": "prompt_lookup"}, TorchConfig
    )
    fast = TorchCausalLM(fast_config, weights=fast_config.weights, name="speculative")
    plain.load()
    fast.load()
    run(plain, 1, 4)
    run(fast, 1, 4)
    best = {"plain": 0.0, "prompt_lookup": 0.0}
    same = True
    for _ in range(args.rounds):
        rate_plain, text_plain = run(plain, args.concurrent, args.new_tokens)
        rate_fast, text_fast = run(fast, args.concurrent, args.new_tokens)
        best["plain"] = max(best["plain"], rate_plain)
        best["prompt_lookup"] = max(best["prompt_lookup"], rate_fast)
        same = same and text_plain == text_fast
    print(
        f"# bench/speculative.py  {date.today()}  SmolLM2-135M-Instruct, {args.concurrent} "
        f"concurrent, up to {args.new_tokens} new tokens, greedy, best of {args.rounds}"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print("| decoding | tokens/s |")
    print("| --- | --- |")
    for name, rate in best.items():
        print(f"| {name} | {rate:.1f} |")
    acceptance = fast.accepted / max(fast.drafted, 1)
    print(
        f"\nspeedup {best['prompt_lookup'] / best['plain']:.2f}x, draft tokens accepted "
        f"{100 * acceptance:.0f}%, identical text: {same}"
    )


if __name__ == "__main__":
    main()
