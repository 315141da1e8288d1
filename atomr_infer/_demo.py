"""``atomr-infer demo``: the original's remote-only demo, without spending a cent.

Three scenarios against the testkit's mock OpenAI server (real HTTP on loopback) through
the real OpenAI runtime and the Cluster: the happy path streams an answer; a 429 with
``Retry-After: 1`` is retried and succeeds; five 503s open the circuit breaker (threshold
3), after which calls fail fast with ``CircuitOpenError`` and never reach the server.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["run_demo"]

HELLO = [{"role": "user", "content": "Hello from the mock!"}]


def _config(base_url: str) -> Any:
    from atomr_infer_core.config import load_config

    runtime_config = {"base_url": base_url, "api_key": "sk-demo-not-a-real-key"}
    return load_config(
        {
            "cluster": {"name": "demo"},
            "deployment": [
                {
                    "name": "happy",
                    "model": "gpt-4o-mini",
                    "runtime": "openai",
                    "runtime_config": runtime_config,
                },
                {
                    "name": "retrying",
                    "model": "gpt-4o-mini",
                    "runtime": "openai",
                    "runtime_config": runtime_config,
                    "retry": {
                        "max_retries": 3,
                        "initial_backoff": "50ms",
                        "max_backoff": "2s",
                        "jitter": "none",
                    },
                },
                {
                    "name": "breaker",
                    "model": "gpt-4o-mini",
                    "runtime": "openai",
                    "runtime_config": runtime_config,
                    "retry": {"max_retries": 0},
                    "circuit_breaker": {"failure_threshold": 3, "open_duration": "5s"},
                },
            ],
        },
        env={},
    )


def _breaker_state(cluster: Any, name: str) -> str:
    return next((str(d.breaker) for d in cluster.list() if d.name == name), "?")


async def _call(cluster: Any, name: str, stream: bool) -> tuple[str, str]:
    from atomr_infer_core.errors import InferenceError

    try:
        if stream:
            parts = []
            async with cluster.stream(name, messages=HELLO) as chunks:
                async for chunk in chunks:
                    parts.append(chunk.text_delta)
            return "ok", repr("".join(parts))
        tokens = await cluster.complete(name, messages=HELLO)
        return "ok", repr(tokens.text)
    except InferenceError as exc:
        return type(exc).__name__, exc.message[:60]


async def _scenarios() -> list[tuple[str, str, str, str, int, str, float]]:
    from atomr_infer_runtimes import open_cluster
    from atomr_infer_testkit import mock_openai

    rows: list[tuple[str, str, str, str, int, str, float]] = []
    async with mock_openai() as server, open_cluster(_config(server.url + "/v1")) as cluster:

        async def run(scenario: str, name: str, label: str, stream: bool = False) -> None:
            before = len(server.requests)
            started = time.monotonic()
            outcome, detail = await _call(cluster, name, stream)
            hits = len(server.requests) - before
            elapsed = time.monotonic() - started
            rows.append(
                (scenario, label, outcome, detail, hits, _breaker_state(cluster, name), elapsed)
            )

        await run("1 happy path", "happy", "stream", stream=True)
        server.inject_status(429, retry_after=1.0)
        await run("2 429 retried", "retrying", "call")
        server.inject_5xx(5, status=503)
        for i in range(4):
            await run("3 circuit opens", "breaker", f"call {i}")
    return rows


#: the plugins the demo runs on, and the line that installs each
NEEDS = {
    "atomr_infer_openai": "pip install atomr-infer-openai",
    "atomr_infer_testkit": "pip install atomr-infer-testkit",
}


def missing_plugins() -> list[str]:
    """The ``pip install`` lines for the demo's plugins that are not installed."""
    import importlib.util

    return [line for module, line in NEEDS.items() if importlib.util.find_spec(module) is None]


def run_demo() -> int:
    """Run the three scenarios and print them as a table; exit 0 when all behaved."""
    import sys

    import trio

    missing = missing_plugins()
    if missing:
        print(
            "atomr-infer demo runs the OpenAI runtime against the testkit's mock server; install:\n"
            + "\n".join(f"  {line}" for line in missing),
            file=sys.stderr,
        )
        return 1
    rows = trio.run(_scenarios)
    header = ("scenario", "call", "outcome", "detail", "upstream hits", "breaker", "seconds")
    widths = [max(len(str(r[i])) if i != 6 else 7 for r in [header, *rows]) for i in range(7)]
    print("atomr-infer demo: the OpenAI runtime against the testkit's mock server (no network)\n")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [*map(str, row[:6]), f"{row[6]:.2f}"]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    expected = [
        ("ok", 1),
        ("ok", 2),
        ("ServerError", 1),
        ("ServerError", 1),
        ("ServerError", 1),
        ("CircuitOpenError", 0),
    ]
    ok = [(r[2], r[4]) for r in rows] == expected
    print("\nall scenarios behaved as expected" if ok else "\nUNEXPECTED results: see the table")
    return 0 if ok else 1
