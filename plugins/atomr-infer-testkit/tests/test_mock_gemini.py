"""The mock Gemini server (AI Studio and Vertex AI paths) over real loopback HTTP."""

from __future__ import annotations

import json

import httpx

from atomr_infer_testkit import mock_gemini

BODY = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
}
STUDIO = "/v1beta/models/gemini-2.5-flash"
VERTEX = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro"


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def test_ai_studio_json_and_vertex_stream() -> None:
    async with mock_gemini() as server, httpx.AsyncClient(base_url=server.url) as client:
        server.thoughts_tokens = 5
        answer = await client.post(f"{STUDIO}:generateContent", json=BODY)
        stream = await client.post(f"{VERTEX}:streamGenerateContent?alt=sse", json=BODY)
    data = answer.json()
    assert data["candidates"][0]["content"]["parts"] == [{"text": "Echo: hello there"}]
    assert data["candidates"][0]["finishReason"] == "STOP"
    assert data["usageMetadata"] == {
        "promptTokenCount": 4,
        "candidatesTokenCount": 3,
        "totalTokenCount": 12,
        "thoughtsTokenCount": 5,
    }
    events = _events(stream.text)
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in events] == [
        "Echo:",
        " hello",
        " there",
    ]
    assert [e["usageMetadata"]["candidatesTokenCount"] for e in events] == [1, 2, 3]
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_keys_tokens_and_errors() -> None:
    async with (
        mock_gemini(context_window=10) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        server.require_api_key("key-1")
        bad = await client.post(f"{STUDIO}:generateContent", json=BODY)
        good = await client.post(
            f"{STUDIO}:generateContent", json=BODY, headers={"x-goog-api-key": "key-1"}
        )
        bearer = await client.post(
            f"{VERTEX}:generateContent", json=BODY, headers={"authorization": "Bearer key-1"}
        )
        server.require_api_key(None)
        server.inject_status(429, retry_after=3)
        exhausted = await client.post(f"{STUDIO}:generateContent", json=BODY)
        long_body = {**BODY, "generationConfig": {"maxOutputTokens": 20}}
        too_long = await client.post(f"{STUDIO}:generateContent", json=long_body)
        blocked_body = {"contents": [{"role": "user", "parts": [{"text": "FORBIDDEN"}]}]}
        blocked = await client.post(f"{STUDIO}:generateContent", json=blocked_body)
    assert bad.status_code == 401
    assert bad.json()["error"]["status"] == "UNAUTHENTICATED"
    assert good.status_code == 200 and bearer.status_code == 200
    assert exhausted.status_code == 429
    assert exhausted.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert exhausted.json()["error"]["details"][0]["retryDelay"] == "3s"
    assert too_long.status_code == 400
    assert (
        "exceeds the maximum number of tokens allowed (10)" in too_long.json()["error"]["message"]
    )
    assert blocked.json()["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in blocked.json()


async def test_candidates_tools_and_stream_error_event() -> None:
    tools = [{"functionDeclarations": [{"name": "lookup"}]}]
    async with mock_gemini() as server, httpx.AsyncClient(base_url=server.url) as client:
        two = await client.post(
            f"{STUDIO}:generateContent",
            json={**BODY, "generationConfig": {"candidateCount": 2, "maxOutputTokens": 2}},
        )
        called = await client.post(f"{STUDIO}:generateContent", json={**BODY, "tools": tools})
        server.error_event_after(1)
        broken = await client.post(f"{STUDIO}:streamGenerateContent?alt=sse", json=BODY)
    texts = ["".join(p["text"] for p in c["content"]["parts"]) for c in two.json()["candidates"]]
    assert texts == ["Echo: hello", "Echo #1:"]
    assert two.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert called.json()["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "lookup", "args": {"input": "hello there"}}}
    ]
    events = _events(broken.text)
    assert len(events) == 2 and events[-1]["error"]["status"] == "UNAVAILABLE"
