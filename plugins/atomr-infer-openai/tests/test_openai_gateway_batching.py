"""Events that arrive in one upstream read go to the client in one write, unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

import atomr_infer_openai._plugin as openai_plugin
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway

WORDS = ["Hel", "lo", " there", "!"]


def _frames() -> bytes:
    head = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    frames = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    frames += [{**head, "choices": [{"index": 0, "delta": {"content": w}}]} for w in WORDS]
    frames.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    frames.append({**head, "choices": [], "usage": usage})
    text = "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + "data: [DONE]\n\n"
    return text.encode()


async def _upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _frames()})  # every event in one write


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[str]:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config))
        yield binds[0]
        nursery.cancel_scope.cancel()


async def test_batched_stream_is_complete_and_ends_once() -> None:
    async with _serving(_upstream) as upstream:
        deployment = {
            "name": "chat",
            "model": "gpt-4o-mini",
            "runtime_config": {"base_url": f"{upstream}/v1", "api_key": "sk-x"},
        }
        config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": [deployment]})
        async with open_cluster(config, plugins=[openai_plugin], load_entry_points=False) as cl:
            async with open_gateway(cl) as url:
                body = {
                    "model": "chat",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                async with httpx.AsyncClient(base_url=url) as http:
                    for _ in range(3):
                        resp = await http.post("/v1/chat/completions", json=body)
                        assert resp.status_code == 200
                        events = [e for e in resp.text.split("\n\n") if e]
                        assert events[-1] == "data: [DONE]"
                        assert resp.text.count("[DONE]") == 1
                        payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
                        text = "".join(
                            c["delta"].get("content") or ""
                            for p in payloads
                            for c in p.get("choices", [])
                        )
                        assert text == "".join(WORDS)
                        assert payloads[-1]["usage"]["completion_tokens"] == 4
