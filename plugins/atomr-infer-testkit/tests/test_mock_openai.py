"""The mock OpenAI server over real loopback HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from atomr_infer_testkit import mock_openai


def _events(text: str) -> list[object]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_chat_json_echoes_last_user_message() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
        resp = await client.post("/v1/chat/completions", json=body)
    data = resp.json()
    assert resp.status_code == 200
    assert data["choices"][0]["message"]["content"] == "Echo: hello there"
    assert data["usage"]["prompt_tokens"] == 2
    assert data["usage"]["completion_tokens"] == 3
    assert server.requests[0].json == body


async def test_chat_stream_has_usage_chunk_and_done() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        body = {
            "model": "gpt-4o",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "a b"}],
        }
        resp = await client.post("/v1/chat/completions", json=body)
    events = _events(resp.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"]
    )
    assert text == "Echo: a b"
    assert server.streams_completed == 1


async def test_injected_status_then_normal() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.inject_status(429, retry_after=2)
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        first = await client.post("/v1/chat/completions", json=body)
        second = await client.post("/v1/chat/completions", json=body)
    assert first.status_code == 429
    assert first.headers["retry-after"] == "2"
    assert first.json()["error"]["type"] == "rate_limit_error"
    assert second.status_code == 200


async def test_require_api_key() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.require_api_key("sk-good")
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        bad = await client.post("/v1/chat/completions", json=body)
        good = await client.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-good"}
        )
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_api_key"
    assert good.status_code == 200


async def test_drop_after_closes_connection_mid_body() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.drop_after(2)
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b c"}]}
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                async for part in resp.aiter_bytes():
                    received += part
    assert len(_events(received.decode())) == 2


async def test_client_abort_is_recorded() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.stall_after(1)
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for _ in resp.aiter_bytes():
                break
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
    assert server.aborted_streams == 1


async def test_slow_first_byte_on_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.slow_first_byte(7.0)
        start = trio.current_time()
        resp = await client.get("/v1/models")
        assert resp.status_code == 200  # /v1/models takes no faults
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        resp = await client.post("/v1/chat/completions", json=body, timeout=60)
        assert resp.status_code == 200
        assert trio.current_time() - start == pytest.approx(7.0)


async def test_embeddings_are_deterministic() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        body = {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 4}
        one = (await client.post("/v1/embeddings", json=body)).json()
        two = (await client.post("/v1/embeddings", json=body)).json()
    assert one == two
    assert [len(d["embedding"]) for d in one["data"]] == [4, 4]
    assert one["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


async def test_error_event_after_chunks() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.error_event_after(2, type="server_error", message="overloaded")
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
        resp = await client.post("/v1/chat/completions", json=body)
    events = _events(resp.text)
    assert len(events) == 3
    assert events[-1] == {
        "error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}
    }


async def test_azure_paths_need_an_api_version() -> None:
    async with mock_openai() as server, httpx.AsyncClient(base_url=server.url) as client:
        body = {"messages": [{"role": "user", "content": "x"}]}
        ok = await client.post(
            "/openai/deployments/dep/chat/completions?api-version=2024-10-21", json=body
        )
        missing = await client.post("/openai/deployments/dep/chat/completions", json=body)
    assert ok.json()["model"] == "dep"
    assert missing.status_code == 404
