"""The anthropic runtime through the real Cluster and gateway, against the mock server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from atomr_infer_anthropic import PLUGIN
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockAnthropicServer, mock_anthropic

HI = [{"role": "user", "content": "hello big world"}]


@asynccontextmanager
async def gateway_for(server: MockAnthropicServer) -> AsyncIterator[httpx.AsyncClient]:
    deployment: dict[str, Any] = {
        "name": "claude",
        "model": "claude-haiku-4-5-20251001",
        "runtime_config": {"base_url": f"{server.url}/v1", "api_key": "sk-ant"},
        "retry": {"jitter": "none"},
    }
    config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": [deployment]})
    async with open_cluster(config, plugins=[PLUGIN], load_entry_points=False) as cluster:
        async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
            yield http


def sse_payloads(text: str) -> list[Any]:
    return [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {")]


def streamed_text(payloads: list[Any]) -> str:
    return "".join(
        p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices")
    )


async def test_prompt_too_long_is_a_400_context_length() -> None:
    async with mock_anthropic(context_window=10) as server, gateway_for(server) as http:
        resp = await http.post("/v1/chat/completions", json={"model": "claude", "messages": HI})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"


async def test_error_event_after_output_ends_the_stream_with_an_error_event() -> None:
    async with mock_anthropic() as server, gateway_for(server) as http:
        server.error_event_after(2)
        body = {"model": "claude", "messages": HI, "stream": True}
        resp = await http.post("/v1/chat/completions", json=body)
    payloads = sse_payloads(resp.text)
    assert streamed_text(payloads) == "Echo: hello"
    assert "error" in payloads[-1]
    assert "[DONE]" not in resp.text
    assert len(server.requests) == 1


async def test_mid_stream_drop_sends_an_error_event_without_duplicated_text() -> None:
    async with mock_anthropic() as server, gateway_for(server) as http:
        server.drop_after(5)  # message_start, block start, ping, "Echo:", " hello"
        body = {"model": "claude", "messages": HI, "stream": True}
        resp = await http.post("/v1/chat/completions", json=body)
    payloads = sse_payloads(resp.text)
    assert streamed_text(payloads) == "Echo: hello"
    assert "error" in payloads[-1]
    assert len(server.requests) == 1


async def test_client_disconnect_aborts_the_upstream_stream() -> None:
    async with mock_anthropic() as server, gateway_for(server) as http:
        server.stall_after(4)
        body = {"model": "claude", "messages": HI, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for part in resp.aiter_text():
                if "Echo:" in part:
                    break
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
    assert server.aborted_streams == 1
