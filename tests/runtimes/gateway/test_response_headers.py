"""Response headers: x-ratelimit-* follow the rolling windows, x-atomr-deployment names who
answered, openai-processing-ms is the time taken."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
import trio.testing

from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_runtimes.gateway._headers import format_reset
from atomr_infer_testkit import mock_runtime_plugin

HI = [{"role": "user", "content": "hi"}]

CONFIG = {
    "cluster": {"bind": "127.0.0.1:0"},
    "deployment": [
        {
            "name": "chat",
            "model": "mock",
            "runtime": "mock",
            "runtime_config": {"chunks": ["a", "b"], "input_tokens": 5, "chunk_delay": "250ms"},
            "rate_limits": {"requests_per_minute": 3, "tokens_per_minute": 1000},
            "serving": {"on_capacity_exhausted": "reject"},
        },
        {
            "name": "primary",
            "model": "mock",
            "runtime": "mock",
            "fallbacks": ["backup"],
            "runtime_config": {"fail_with": "server_error"},
        },
        {"name": "backup", "model": "mock", "runtime": "mock"},
    ],
}


@asynccontextmanager
async def _gateway() -> AsyncIterator[str]:
    plugin = mock_runtime_plugin()
    async with (
        open_cluster(load_config(CONFIG), plugins=[plugin], load_entry_points=False) as cluster,
        open_gateway(cluster) as url,
    ):
        yield url


async def _post(url: str, model: str, *, stream: bool = False) -> httpx.Response:
    # a fresh connection per request: the mock clock jumps past keep-alive timeouts
    async with httpx.AsyncClient(base_url=url) as http:
        body = {"model": model, "messages": HI, "stream": stream}
        return await http.post("/v1/chat/completions", json=body)


def _limits(response: httpx.Response) -> tuple[str, ...]:
    h = response.headers
    return tuple(
        h[f"x-ratelimit-{what}-{kind}"]
        for kind in ("requests", "tokens")
        for what in ("limit", "remaining", "reset")
    )


async def test_rate_limit_headers_decrease_and_reset_as_the_window_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _gateway() as url:
        # each request takes 0.5 s (two chunks 250 ms apart) and spends 7 tokens (5 in, 2 out)
        answered = [await _post(url, "chat") for _ in range(3)]
        autojump_clock.jump(20)
        refused = await _post(url, "chat")  # t = 21.5: the window is full
        autojump_clock.jump(39)
        later = await _post(url, "chat")  # t = 60.5: the first three left the window
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert [_limits(r) for r in answered] == [
        ("3", "2", "59.5s", "1000", "993", "59.5s"),
        ("3", "1", "59.5s", "1000", "986", "59.5s"),
        ("3", "0", "59.5s", "1000", "979", "59.5s"),
    ]
    assert refused.status_code == 429
    assert refused.headers["x-atomr-deployment"] == "chat"
    # the window is full again 60 s after the last spend (t = 1.0)
    assert _limits(refused) == ("3", "0", "39.5s", "1000", "979", "39.5s")
    assert later.status_code == 200
    assert _limits(later) == ("3", "2", "59.5s", "1000", "993", "59.5s")


async def test_headers_name_the_fallback_that_answered_and_the_time_taken() -> None:
    async with _gateway() as url:
        fallback = await _post(url, "primary")
        streamed = await _post(url, "primary", stream=True)
        direct = await _post(url, "backup")
    assert fallback.status_code == streamed.status_code == 200
    assert fallback.headers["x-atomr-deployment"] == "backup"
    assert streamed.headers["x-atomr-deployment"] == "backup"
    assert direct.headers["x-atomr-deployment"] == "backup"
    # backup has no limits: no rate-limit headers rather than made-up ones
    assert not [k for k in fallback.headers if k.startswith("x-ratelimit-")]
    for response in (fallback, streamed, direct):
        assert int(response.headers["openai-processing-ms"]) >= 0


async def test_openai_sdk_reads_the_headers() -> None:
    async with (
        _gateway() as url,
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client,
    ):
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=HI)
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    assert raw.headers["x-atomr-deployment"] == "chat"
    assert raw.parse().choices[0].message.content == "ab"


def test_reset_durations_look_like_openais() -> None:
    assert format_reset(0) == "0s"
    assert format_reset(0.0004) == "1ms"
    assert format_reset(0.25) == "250ms"
    assert format_reset(1.5) == "1.5s"
    assert format_reset(59.9991) == "59.999s"
    assert format_reset(60) == "1m0s"
    assert format_reset(361.2) == "6m1s"
