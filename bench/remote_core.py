"""Remote core micro-benchmarks: SSE decoding, breaker checks, limiter acquires.

    .venv/bin/python bench/remote_core.py [--mb 50] [--repeat 3]

SSE: the same ~50 MB streams of OpenAI chat-completion chunks (English text, and text
with one non-ASCII token in five), cut into 1-16 KB reads
(seeded), decoded by ``atomr_infer_remote.SSEDecoder`` and by httpx-sse's own pipeline
(incremental UTF-8 decode → ``SSELineDecoder`` → ``SSEDecoder.decode`` per line, as its
``EventSource.aiter_sse`` does). Best of ``--repeat`` runs; both must yield identical
events. Times are process CPU time, best of the runs. Breaker and limiter: a check (or
acquire) plus its settlement, in a loop.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable

import trio
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder, SSELineDecoder

from atomr_infer_core import CircuitBreakerConfig, RateLimits
from atomr_infer_remote import CircuitBreaker, RateLimiter, SSEDecoder

#: English output, as most chat completions are: every byte ASCII
ENGLISH = ["Hello", " world", ",", " the", " quick", " brown", " fox", " jumps", ".", "\\n"]
#: one token in five non-ASCII (é, 日本): every decoded read becomes a 2-byte-per-char str
MIXED = ["Hello", " world", ",", " the", " quick", " brown", " fox", " é", " 日本", "\\n"]


def openai_stream(target_bytes: int, words: list[str]) -> bytes:
    parts: list[bytes] = []
    size = 0
    i = 0
    while size < target_bytes:
        chunk = {
            "id": "chatcmpl-AbC123xyz",
            "object": "chat.completion.chunk",
            "created": 1763800000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": words[i % len(words)]},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        line = f"data: {json.dumps(chunk, separators=(',', ':'), ensure_ascii=False)}\n\n"
        parts.append(line.encode())
        size += len(parts[-1])
        i += 1
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def reads(data: bytes, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1024, 16384)
        out.append(data[pos : pos + n])
        pos += n
    return out


def decode_ours(chunks: list[bytes], sink: Callable[[object], object]) -> None:
    decoder = SSEDecoder()
    for chunk in chunks:
        for event in decoder.receive_data(chunk):
            sink(event)


def decode_httpx_sse(chunks: list[bytes], sink: Callable[[object], object]) -> None:
    text = codecs.getincrementaldecoder("utf-8")("replace")
    lines = SSELineDecoder()
    decoder = HttpxSSEDecoder()
    for chunk in chunks:
        for line in lines.decode(text.decode(chunk)):
            event = decoder.decode(line)
            if event is not None:
                sink(event)


def collect(decode: Callable[..., None], chunks: list[bytes]) -> list[str]:
    out: list[str] = []
    decode(chunks, lambda e: out.append(e.data))
    return out


def best_of(repeat: int, *fns: Callable[[], object]) -> list[float]:
    """Best CPU time of each function (process time: other processes sharing the
    cores do not count); runs are interleaved so what remains hits all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - start)
    return best


def breaker_rate(n: int) -> float:
    breaker = CircuitBreaker(CircuitBreakerConfig(), name="bench", clock=time.monotonic)
    start = time.perf_counter()
    for _ in range(n):
        breaker.record_success(breaker.check())
    return n / (time.perf_counter() - start)


def limiter_nowait_rate(n: int) -> float:
    limits = RateLimits(
        requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=1000
    )
    limiter = RateLimiter(limits, name="bench", clock=time.monotonic)
    start = time.perf_counter()
    for _ in range(n):
        limiter.acquire_nowait(tokens=100).release(actual_tokens=80)
    return n / (time.perf_counter() - start)


def limiter_async_rate(n: int) -> float:
    limits = RateLimits(
        requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=1000
    )
    result: list[float] = []

    async def main() -> None:
        limiter = RateLimiter(limits, name="bench")
        start = time.perf_counter()
        for _ in range(n):
            (await limiter.acquire(tokens=100)).release(actual_tokens=80)
        result.append(n / (time.perf_counter() - start))

    trio.run(main)
    return result[0]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ops", type=int, default=200_000)
    args = parser.parse_args()

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    rows: list[tuple[str, str, str]] = []
    for label, words in (("English", ENGLISH), ("mixed", MIXED)):
        data = openai_stream(int(args.mb * 1_000_000), words)
        chunks = reads(data)
        ours = collect(decode_ours, chunks)
        if ours != collect(decode_httpx_sse, chunks):
            raise SystemExit("the decoders disagree: not comparing")
        events = len(ours)
        # Timed runs hand each event to a consumer that drops it, as a streaming client
        # does (keeping 200k events alive would time the garbage collector instead).
        t_ours, t_theirs = best_of(
            args.repeat,
            lambda: decode_ours(chunks, id),  # noqa: B023
            lambda: decode_httpx_sse(chunks, id),  # noqa: B023
        )
        mb = len(data) / 1e6
        print(f"stream {label}: {mb:.1f} MB, {events} events, {len(chunks)} reads of 1-16 KB")
        rows += [
            (
                f"SSE {label}: atomr_infer_remote",
                f"{mb / t_ours:8.1f} MB/s",
                f"{events / t_ours:10,.0f} events/s",
            ),
            (
                f"SSE {label}: httpx-sse 0.4",
                f"{mb / t_theirs:8.1f} MB/s",
                f"{events / t_theirs:10,.0f} events/s",
            ),
            (f"SSE {label}: speed-up", f"{t_theirs / t_ours:8.2f} x", ""),
        ]
    print()
    rows += [
        ("breaker check + record_success", f"{breaker_rate(args.ops):12,.0f} /s", ""),
        ("limiter acquire_nowait + release", f"{limiter_nowait_rate(args.ops):12,.0f} /s", ""),
        ("limiter await acquire + release", f"{limiter_async_rate(args.ops):12,.0f} /s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>16}  {b}")


if __name__ == "__main__":
    main()
