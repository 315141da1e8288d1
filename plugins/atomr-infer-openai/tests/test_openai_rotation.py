"""Rotating an OpenAI deployment's key through the gateway, with a stream in flight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

import atomr_infer_openai._plugin as openai_plugin
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import mock_openai

HI = [{"role": "user", "content": "hello world"}]


def _config(url: str, key: Path) -> Any:
    """One openai deployment on the mock at ``url`` that reads its key from ``key``."""
    runtime_config = {"base_url": f"{url}/v1", "api_key_file": str(key)}
    deployment = {"name": "chat", "model": "gpt-4o-mini", "runtime_config": runtime_config}
    return load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": [deployment]})


async def test_rotation_switches_keys_without_dropping_the_stream_in_flight(
    tmp_path: Path,
) -> None:
    key = tmp_path / "key"
    key.write_text("sk-old")
    async with mock_openai() as server:
        server.require_api_key("sk-old")
        config = _config(server.url, key)
        async with (
            open_cluster(config, plugins=[openai_plugin], load_entry_points=False) as cluster,
            open_gateway(cluster) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            body = {"model": "chat", "messages": HI, "stream": True}
            async with http.stream("POST", "/v1/chat/completions", json=body) as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)
                # the key is rotated at the provider and on disk while the stream runs
                key.write_text("sk-new")
                server.require_api_key("sk-new")
                rotated = await http.post("/admin/rotate-credentials")
                rest = [line async for line in lines]
            after = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
    assert first.startswith("data: ")
    events = [line for line in [first, *rest] if line]
    assert events[-1] == "data: [DONE]"
    text = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or "" for e in events[1:-1]
    )
    assert text == "Echo: hello world"
    assert rotated.json()["deployments"] == [
        {"deployment": "chat", "rebuilt": 1, "failed": 0, "error": None}
    ]
    assert after.status_code == 200
    assert after.json()["choices"][0]["message"]["content"] == "Echo: hello world"
    # the request after the rotation went out with the new key at once: no 401 round trip
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer sk-old",
        "Bearer sk-new",
    ]


async def test_a_failed_rotation_keeps_the_old_key_serving(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-old")
    async with mock_openai() as server:
        config = _config(server.url, key)
        async with (
            open_cluster(config, plugins=[openai_plugin], load_entry_points=False) as cluster,
            open_gateway(cluster) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            key.unlink()
            rotated = await http.post("/admin/rotate-credentials")
            after = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
    assert rotated.status_code == 502
    assert rotated.json()["error"]["code"] == "rotation_failed"
    assert "cannot read the credential file" in rotated.json()["error"]["message"]
    assert rotated.json()["deployments"][0]["failed"] == 1
    assert after.status_code == 200
    assert server.requests[-1].headers["authorization"] == "Bearer sk-old"
