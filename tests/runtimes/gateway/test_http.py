"""Raw HTTP against the gateway: bodies, headers, SSE framing, limits, health."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from atomr_infer_core import ConfigError, errors
from atomr_infer_runtimes.gateway import serve_gateway
from atomr_infer_testkit import MockConfig

from .conftest import FakeCluster, open_gateway

HI = [{"role": "user", "content": "hi"}]


def _events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    frames = text[:-2].split("\n\n")
    assert all(f.startswith("data: ") for f in frames)
    return [f[len("data: ") :] for f in frames]


async def test_sse_framing_with_usage_and_done(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        body = {
            "model": "chat",
            "messages": HI,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await http.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": "abc-1"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-request-id"] == "abc-1"
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-abc-1"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:5]] == [
        "Hello",
        ",",
        " world",
        "!",
    ]
    assert chunks[5]["choices"][0]["finish_reason"] == "stop"
    assert chunks[5]["choices"][0]["delta"] == {}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 5
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_stream_without_usage_has_no_usage_key(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "chat", "messages": HI, "stream": True}
        )
    chunks = [json.loads(e) for e in _events(response.text)[:-1]]
    assert all("usage" not in c for c in chunks)


async def test_error_after_stream_began_is_one_event_and_no_done(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "midfail", "messages": HI, "stream": True}
        )
    events = _events(response.text)
    assert response.status_code == 200
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["type"] == "server_error"
    assert last["error"]["code"] == "upstream_error"
    assert sum("error" in json.loads(e) for e in events) == 1


async def test_request_id_is_generated_when_absent(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
    rid = response.headers["x-request-id"]
    assert rid.startswith("req-")
    assert response.json()["id"] == f"chatcmpl-{rid}"
    assert default_cluster.records[0].batch.request_id == rid


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": "chat"}, "messages"),
        ({"model": "chat", "messages": "hi"}, "messages"),
        ({"model": "chat", "messages": []}, "messages"),
        ({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "chat", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": "chat", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages[0].content[0].type",
        ),
        ({"model": "chat", "messages": HI, "max_tokens": -1}, "max_tokens"),
        ({"model": "chat", "messages": HI, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"model": "chat", "messages": HI, "temperature": "hot"}, "temperature"),
        ({"model": "chat", "messages": HI, "temperature": 3}, "temperature"),
        ({"model": "chat", "messages": HI, "top_p": 1.5}, "top_p"),
        ({"model": "chat", "messages": HI, "n": 0}, "n"),
        ({"model": "chat", "messages": HI, "stream": "yes"}, "stream"),
        ({"model": "chat", "messages": HI, "stop": [1]}, "stop"),
        ({"model": "chat", "messages": HI, "seed": True}, "seed"),
        ({"model": "chat", "messages": HI, "tools": {"a": 1}}, "tools"),
        (
            {"model": "chat", "messages": HI, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
    ],
)
async def test_invalid_chat_bodies_are_400_naming_the_param(
    default_cluster: FakeCluster, body: dict[str, object], param: str
) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param.split("[")[0].split(".")[0] in error["message"]
    assert default_cluster.records == []


async def test_bad_json_and_non_object_bodies_are_400(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        bad = await http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        array = await http.post("/v1/completions", content=b"[1, 2]")
        emb = await http.post("/v1/embeddings", json={"model": "chat", "input": [1, 2]})
        fmt = await http.post(
            "/v1/embeddings", json={"model": "chat", "input": "a", "encoding_format": "hex"}
        )
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]["message"]
    assert array.status_code == 400
    assert "JSON object" in array.json()["error"]["message"]
    assert emb.json()["error"]["param"] == "input"
    assert fmt.json()["error"]["param"] == "encoding_format"


async def test_body_too_large_is_413() -> None:
    cluster = FakeCluster({"chat": MockConfig()}, max_request_bytes=1000)
    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        big = [{"role": "user", "content": "x" * 2000}]
        response = await http.post("/v1/chat/completions", json={"model": "chat", "messages": big})
        ok = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["error"]["message"]
    assert ok.status_code == 200


async def test_chunked_body_too_large_is_413() -> None:
    cluster = FakeCluster({"chat": MockConfig()}, max_request_bytes=1000)

    async def body() -> object:
        for _ in range(5):
            yield b" " * 400

    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", content=body())
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (
            errors.RateLimitedError("slow", retry_after_s=2.5),
            429,
            {"retry-after": "3", "retry-after-ms": "2500", "x-should-retry": "true"},
        ),
        (
            errors.BudgetExceededError("spent", retry_after_s=1800.0),
            429,
            {"retry-after": "1800", "x-should-retry": "false"},
        ),
        (errors.QuotaExceededError("no quota"), 429, {"x-should-retry": "false"}),
        (
            errors.CircuitOpenError("open", retry_after_s=4.0),
            503,
            {"retry-after": "4", "retry-after-ms": "4000"},
        ),
        (errors.CapacityExhaustedError("full"), 503, {"x-should-retry": "true"}),
        (errors.DrainingError("draining", retry_after_s=1.0), 503, {"retry-after": "1"}),
        (errors.ServerError("bad upstream"), 502, {"x-should-retry": "true"}),
        (errors.RequestTimeoutError("too slow"), 504, {}),
        (errors.ContentFilteredError("filtered"), 400, {"x-should-retry": "false"}),
        (errors.UnauthorizedError("upstream key"), 401, {"x-should-retry": "false"}),
        (errors.DeploymentFailedError("failed"), 503, {"x-should-retry": "false"}),
    ],
)
async def test_error_status_and_retry_headers(
    error: errors.InferenceError, status: int, headers: dict[str, str]
) -> None:
    cluster = FakeCluster({}, errors={"broken": error})
    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "broken", "messages": HI, "stream": True}
        )
    assert response.status_code == status
    assert response.json() == {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": None,
            "code": error.code,
        }
    }
    for name, value in headers.items():
        assert response.headers[name] == value
    if status < 429:  # a request-side error: a retry cannot fix it
        assert response.headers["x-should-retry"] == "false"


async def test_health_ready_lists_states_and_is_503_until_serving() -> None:
    cluster = FakeCluster({"a": MockConfig(), "b": MockConfig()}, states={"b": "pending"})
    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        live = await http.get("/health/live")
        ready = await http.get("/health/ready")
        cluster.states["b"] = "serving"
        ready_again = await http.get("/health/ready")
        status = await http.get("/v1/status")
        metrics = await http.get("/metrics")
        missing = await http.get("/v2/nothing")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["deployments"] == [
        {"name": "a", "state": "serving", "reason": None},
        {"name": "b", "state": "pending", "reason": None},
    ]
    assert ready_again.status_code == 200
    assert status.json()["deployments"][0]["breaker"] == "closed"
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"atomr_requests_total" in metrics.content
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


async def test_keys_guard_v1_but_not_health() -> None:
    cluster = FakeCluster({"chat": MockConfig()}, api_keys=("sk-1", "sk-2"))
    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        none = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
        wrong_scheme = await http.get("/v1/models", headers={"authorization": "Basic sk-1"})
        second = await http.get("/v1/models", headers={"authorization": "Bearer sk-2"})
        health = await http.get("/health/live")
    assert none.status_code == 401
    assert none.json()["error"]["code"] == "invalid_api_key"
    assert "sk-1" not in none.text
    assert wrong_scheme.status_code == 401
    assert second.status_code == 200
    assert health.status_code == 200


async def test_refuses_public_bind_without_keys() -> None:
    cluster = FakeCluster({"chat": MockConfig()})
    with pytest.raises(ConfigError, match="allow_unauthenticated"):
        await serve_gateway(cluster, host="0.0.0.0", port=0)


async def test_features_the_target_cannot_honour_are_refused(
    default_cluster: FakeCluster,
) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        replies = [
            await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI, **extra})
            for extra in (
                {"response_format": schema},
                {"tools": [{"type": "function", "function": {"name": "f"}}]},
                {"logprobs": True},
                {"n": 2},
            )
        ]
    errors_ = [r.json()["error"] for r in replies]
    assert [r.status_code for r in replies] == [400, 400, 400, 400]
    assert [e["code"] for e in errors_] == ["unsupported_parameter"] * 4
    assert [e["param"] for e in errors_] == ["response_format", "tools", "logprobs", "n"]
    assert "the mock runtime" in errors_[0]["message"]
    assert default_cluster.records == []


async def test_tools_and_response_format_pass_through() -> None:
    # the deployment claims the openai runtime, which honours tools, images and JSON mode
    cluster = FakeCluster({"chat": MockConfig()}, runtimes={"chat": "openai"})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "user": "u1",
        "stop": ["\n"],
        "max_completion_tokens": 3,
        "metadata": {"k": "v"},
    }
    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    batch = cluster.records[0].batch
    assert batch.tools == tuple(tools)
    assert batch.tool_choice == "auto"
    assert batch.response_format == {"type": "json_object"}
    assert batch.user == "u1"
    assert batch.sampling.stop == ("\n",)
    assert batch.sampling.max_tokens == 3
    assert batch.extra == {"metadata": {"k": "v"}}
    assert batch.messages[1].content[1].mime == "image/png"
    assert response.json()["choices"][0]["finish_reason"] == "length"


async def test_concurrent_stream_and_json_share_the_server(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        results: dict[str, int] = {}

        async def stream() -> None:
            r = await http.post(
                "/v1/chat/completions", json={"model": "slow", "messages": HI, "stream": True}
            )
            results["stream"] = r.status_code

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            await default_cluster.entered.wait()
            r = await http.get("/v1/models")
            results["models"] = r.status_code
            results["stream_done_first"] = int("stream" in results)
    assert results == {"stream": 200, "models": 200, "stream_done_first": 0}


async def test_shutdown_trigger_lets_in_flight_streams_finish(default_cluster: FakeCluster) -> None:
    stop = trio.Event()
    done: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(default_cluster.run)
        url = await nursery.start(
            lambda task_status: serve_gateway(
                default_cluster, port=0, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:

            async def stream() -> None:
                r = await http.post(
                    "/v1/chat/completions", json={"model": "slow", "messages": HI, "stream": True}
                )
                done.append(_events(r.text)[-1])

            async with trio.open_nursery() as clients:
                for _ in range(10):
                    clients.start_soon(stream)
                while len(default_cluster.records) < 10:
                    await default_cluster.entered.wait()
                    default_cluster.entered = trio.Event()
                stop.set()
        async with httpx.AsyncClient(base_url=url) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get("/health/live")
        nursery.cancel_scope.cancel()
    assert done == ["[DONE]"] * 10


async def test_request_log_line_has_status_and_request_id(
    default_cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="atomr_infer.gateway")
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        await http.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": HI},
            headers={"x-request-id": "r-1"},
        )
        await http.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": HI, "stream": True},
            headers={"x-request-id": "r-2"},
        )
        await http.post(
            "/v1/chat/completions",
            json={"model": "nope", "messages": HI},
            headers={"x-request-id": "r-3"},
        )
    lines = [
        r.getMessage().rsplit(" ", 1)[0] for r in caplog.records if r.name == "atomr_infer.gateway"
    ]
    assert lines == [
        "POST /v1/chat/completions 200 request_id=r-1",
        "POST /v1/chat/completions 200 request_id=r-2",
        "POST /v1/chat/completions 404 request_id=r-3",
    ]


async def test_a_bug_before_output_is_500_with_no_retry() -> None:
    cluster = FakeCluster({"chat": MockConfig()}, errors={"buggy": RuntimeError("boom")})
    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "buggy", "messages": HI},
            headers={"x-request-id": "r-9"},
        )
    assert response.status_code == 500
    assert response.headers["x-should-retry"] == "false"
    assert "r-9" in response.json()["error"]["message"]
    assert "boom" not in response.text


async def test_a_bug_mid_stream_ends_the_stream_with_an_error_event() -> None:
    cluster = FakeCluster({"chat": MockConfig()}, bug_after={"chat": 2})
    async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "chat", "messages": HI, "stream": True}
        )
    events = _events(response.text)
    assert response.status_code == 200
    assert json.loads(events[-1])["error"]["type"] == "server_error"
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-1]] == [
        "Hello",
        ",",
    ]
