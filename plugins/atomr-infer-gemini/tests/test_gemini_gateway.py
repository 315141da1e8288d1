"""The gemini runtime through the real Cluster and gateway, against the mock server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from atomr_infer_core.config import load_config
from atomr_infer_gemini import PLUGIN
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockGeminiServer, mock_gemini

HI = [{"role": "user", "content": "hello big world"}]


@asynccontextmanager
async def gateway_for(server: MockGeminiServer) -> AsyncIterator[httpx.AsyncClient]:
    deployment: dict[str, Any] = {
        "name": "gem",
        "model": "gemini-2.5-flash",
        "runtime_config": {"endpoint": f"{server.url}/v1beta/", "api_key": "AIza"},
        "retry": {"jitter": "none"},
    }
    config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": [deployment]})
    async with open_cluster(config, plugins=[PLUGIN], load_entry_points=False) as cluster:
        async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
            yield http


def sse_payloads(text: str) -> list[Any]:
    return [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {")]


async def test_token_limit_is_a_400_context_length() -> None:
    async with mock_gemini(context_window=10) as server, gateway_for(server) as http:
        body = {"model": "gem", "messages": HI, "max_tokens": 50}
        resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"


async def test_blocked_prompt_is_a_400_content_filter() -> None:
    async with mock_gemini() as server, gateway_for(server) as http:
        body = {"model": "gem", "messages": [{"role": "user", "content": "FORBIDDEN"}]}
        resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "content_filter"


async def test_resource_exhausted_past_the_deadline_is_a_429_with_retry_after() -> None:
    async with mock_gemini() as server, gateway_for(server) as http:
        server.inject_status(429, retry_after=120)
        resp = await http.post("/v1/chat/completions", json={"model": "gem", "messages": HI})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "120"
    assert len(server.requests) == 1


async def test_mid_stream_drop_sends_an_error_event_without_duplicated_text() -> None:
    async with mock_gemini() as server, gateway_for(server) as http:
        server.drop_after(2)
        body = {"model": "gem", "messages": HI, "stream": True}
        resp = await http.post("/v1/chat/completions", json=body)
    payloads = sse_payloads(resp.text)
    text = "".join(
        p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices")
    )
    assert text == "Echo: hello"
    assert "error" in payloads[-1]
    assert len(server.requests) == 1


async def test_client_disconnect_aborts_the_upstream_stream() -> None:
    async with mock_gemini() as server, gateway_for(server) as http:
        server.stall_after(1)
        body = {"model": "gem", "messages": HI, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for part in resp.aiter_text():
                if "Echo:" in part:
                    break
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
    assert server.aborted_streams == 1
