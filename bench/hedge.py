"""Tail latency with and without hedging: a primary whose first byte is sometimes slow, a
fast fallback, the gateway in front, the testkit's mock OpenAI servers behind (loopback).

    python bench/hedge.py [--requests 200] [--slow-share 0.1] [--slow 0.5] [--hedge-after 50ms]

Each request is sent on its own (concurrency 1, so the figures are latencies, not queueing);
before a request, with probability ``--slow-share`` (seeded), the primary's next answer
is delayed by ``--slow`` seconds before its first byte. Run twice, on fresh gateways: without
``hedge_after`` (a slow answer is waited for) and with it (a second attempt goes to the
fallback after ``--hedge-after``). Prints p50, p99 and max of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import httpx
import trio

from atomr_infer_core import Deployment, RetryPolicy
from atomr_infer_openai import _plugin as openai_plugin
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import mock_openai

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}


async def run(args: argparse.Namespace, hedge_after: str | None) -> list[float]:
    rng = random.Random(7)
    async with mock_openai() as slow, mock_openai() as fast:
        no_retry = RetryPolicy(max_retries=0)
        extra = {} if hedge_after is None else {"hedge_after": hedge_after}
        deployments = [
            Deployment(
                name="chat",
                model="gpt-4o-mini",
                runtime="openai",
                runtime_config={"base_url": f"{slow.url}/v1", "api_key": "sk-a"},
                fallbacks=("fast",),
                retry=no_retry,
                **extra,
            ),
            Deployment(
                name="fast",
                model="gpt-4o-mini",
                runtime="openai",
                runtime_config={"base_url": f"{fast.url}/v1", "api_key": "sk-b"},
                retry=no_retry,
            ),
        ]
        async with (
            open_cluster(deployments, plugins=[openai_plugin], load_entry_points=False) as cluster,
            open_gateway(cluster, port=0) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            for _ in range(10):  # warm the connections
                (await http.post("/v1/chat/completions", json=BODY)).raise_for_status()
            latencies = []
            for _ in range(args.requests):
                if rng.random() < args.slow_share:
                    slow.slow_first_byte(args.slow)
                started = time.perf_counter()
                reply = await http.post("/v1/chat/completions", json=BODY)
                latencies.append(time.perf_counter() - started)
                reply.raise_for_status()
            slow.clear_faults()
    return latencies


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def main(args: argparse.Namespace) -> None:
    print(
        f"{args.requests} requests, c=1; {args.slow_share:.0%} of the primary's answers "
        f"{args.slow * 1000:.0f} ms late before their first byte"
    )
    print(f"{'':24}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, hedge_after in (
        ("no hedging", None),
        (f"hedge_after={args.hedge_after}", args.hedge_after),
    ):
        latencies = await run(args, hedge_after)
        print(
            f"{label:24}{statistics.median(latencies) * 1000:9.1f}"
            f"{_quantile(latencies, 0.99) * 1000:9.1f}{max(latencies) * 1000:9.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per run")
    parser.add_argument("--slow-share", type=float, default=0.1, help="share of slow answers")
    parser.add_argument("--slow", type=float, default=0.5, help="a slow answer's delay, s")
    parser.add_argument("--hedge-after", default="50ms", help="hedge_after of the hedged run")
    trio.run(main, parser.parse_args())
