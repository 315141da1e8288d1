"""Python function calls per gateway request, in one process (gateway + client): a count
that does not move with the machine's load. Used by ``bench/tracing.py --calls``.

    python bench/_calls.py REQUESTS json|stream [OTLP_ENDPOINT]

Counts calls made in the main thread (the trio loop: gateway, cluster, runner and the
httpx client alike) while REQUESTS requests run one after another; an exporter's own
thread is not counted. Prints the calls per request.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import trio

from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import mock_runtime_plugin

CHUNKS = ["Hello", *(f" w{i}" for i in range(1, 8))]


async def main(requests: int, stream: bool, endpoint: str | None) -> None:
    data: dict[str, Any] = {
        "cluster": {"bind": "127.0.0.1:0"},
        "deployment": [
            {
                "name": "bench",
                "model": "mock",
                "runtime": "mock",
                "runtime_config": {"chunks": CHUNKS},
            }
        ],
    }
    if endpoint:
        data["telemetry"] = {"endpoint": endpoint}
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    }
    config = load_config(data)
    async with (
        open_cluster(config, plugins=[mock_runtime_plugin()], load_entry_points=False) as cluster,
        open_gateway(cluster) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        for _ in range(50):  # warm-up: imports, connection, caches
            (await http.post("/v1/chat/completions", json=body)).raise_for_status()
        calls = 0

        def count(_frame: Any, event: str, _arg: Any) -> None:
            nonlocal calls
            if event == "call" or event == "c_call":
                calls += 1

        sys.setprofile(count)
        for _ in range(requests):
            await http.post("/v1/chat/completions", json=body)
        sys.setprofile(None)
    print(f"{calls / requests:.0f}")


if __name__ == "__main__":
    endpoint = sys.argv[3] if len(sys.argv) > 3 else None
    trio.run(main, int(sys.argv[1]), sys.argv[2] == "stream", endpoint)
