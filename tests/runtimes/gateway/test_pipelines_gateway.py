"""``[[pipeline]]`` through a real gateway over the testkit's mock OpenAI servers.

Cascade: ``length`` escalates and a normal stop does not; ``invalid_json`` escalates on a
bad answer; a stream streams the final step (an answering earlier step is replayed);
``x-atomr-deployment`` names the answering step; escalations are counted. Balance: a
slowed member loses the traffic to the fast one; an open-circuit member gets none; a
member failing before output falls to the next.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from atomr_infer_core.config import load_config
from atomr_infer_openai import _plugin as openai_plugin
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockOpenAIServer, mock_openai, mock_runtime_plugin

HI = [{"role": "user", "content": "hi there"}]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "count",
        "schema": {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
            "additionalProperties": False,
        },
    },
}


def _openai(name: str, server: MockOpenAIServer, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "runtime": "openai",
        "runtime_config": {"base_url": f"{server.url}/v1", "api_key": "sk-test"},
        "retry": {"max_retries": 0},
    }


@asynccontextmanager
async def _gateway(
    deployments: list[dict[str, Any]], pipelines: list[dict[str, Any]]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = load_config({"deployment": deployments, "pipeline": pipelines}, env={})
    plugins = [openai_plugin, mock_runtime_plugin()]
    async with (
        open_cluster(config, plugins=plugins, load_entry_points=False) as cluster,
        open_gateway(cluster, port=0) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield http, cluster


@asynccontextmanager
async def _cascade(
    **pipeline: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, MockOpenAIServer, MockOpenAIServer]]:
    async with mock_openai() as small, mock_openai() as big:
        deployments = [_openai("small", small), _openai("big", big, "gpt-4o")]
        spec = {"name": "smart", "kind": "cascade", "steps": ["small", "big"], **pipeline}
        async with _gateway(deployments, [spec]) as (http, cluster):
            yield http, cluster, small, big


def _chat_calls(server: MockOpenAIServer) -> list[dict[str, Any]]:
    return [r.json for r in server.requests if r.path == "/v1/chat/completions"]


def _escalations(cluster: Any, step: str, reason: str) -> float:
    labels = {"pipeline": "smart", "step": step, "reason": reason}
    return cluster.metrics.sample("atomr_pipeline_escalations_total", labels) or 0.0


def _sse_text(body: str) -> str:
    text = ""
    for line in body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            event = json.loads(line[6:])
            for choice in event.get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
    return text


# -- cascade -------------------------------------------------------------------------


async def test_length_escalates_and_a_normal_stop_does_not() -> None:
    async with _cascade() as (http, cluster, small, big):
        cut = await http.post(
            "/v1/chat/completions", json={"model": "smart", "messages": HI, "max_tokens": 1}
        )
        assert cut.status_code == 200
        assert cut.headers["x-atomr-deployment"] == "big"
        assert cut.json()["choices"][0]["message"]["content"] == "Echo:"
        assert cut.json()["model"] == "smart"
        assert [c["model"] for c in _chat_calls(small)] == ["gpt-4o-mini"]
        assert [c["model"] for c in _chat_calls(big)] == ["gpt-4o"]
        assert _escalations(cluster, "small", "length") == 1.0

        whole = await http.post("/v1/chat/completions", json={"model": "smart", "messages": HI})
        assert whole.status_code == 200
        assert whole.headers["x-atomr-deployment"] == "small"
        assert whole.json()["choices"][0]["message"]["content"] == "Echo: hi there"
        assert len(_chat_calls(small)) == 2
        assert len(_chat_calls(big)) == 1  # the stop was returned: no escalation
        assert _escalations(cluster, "small", "length") == 1.0
        metrics = (await http.get("/metrics")).text
        assert (
            'atomr_pipeline_escalations_total{pipeline="smart",reason="length",step="small"} 1.0'
            in metrics
        )


async def test_invalid_json_escalates_on_a_bad_answer() -> None:
    async with mock_openai() as big, mock_openai() as good:
        deployments = [
            # a cheap step that answers broken JSON whatever it is asked
            {
                "name": "junk",
                "model": "mock",
                "runtime": "mock",
                "runtime_config": {"chunks": ['{"n": ', "two"]},
            },
            _openai("good", good),
            _openai("big", big, "gpt-4o"),
        ]
        pipelines = [
            {"name": "smart", "kind": "cascade", "steps": ["junk", "big"]},
            {"name": "fine", "kind": "cascade", "steps": ["good", "big"]},
        ]
        async with _gateway(deployments, pipelines) as (http, cluster):
            body = {"model": "smart", "messages": HI, "response_format": SCHEMA}
            bad = await http.post("/v1/chat/completions", json=body)
            assert bad.status_code == 200
            assert bad.headers["x-atomr-deployment"] == "big"
            assert json.loads(bad.json()["choices"][0]["message"]["content"]) == {"n": 2}
            assert _chat_calls(big)[0]["response_format"] == SCHEMA
            assert _escalations(cluster, "junk", "invalid_json") == 1.0

            # an answer that validates is returned from the first step
            ok = await http.post("/v1/chat/completions", json={**body, "model": "fine"})
            assert ok.headers["x-atomr-deployment"] == "good"
            assert json.loads(ok.json()["choices"][0]["message"]["content"]) == {"n": 2}
            assert len(_chat_calls(big)) == 1


async def test_a_stream_streams_the_final_step_and_replays_an_answering_one() -> None:
    async with _cascade() as (http, cluster, _small, big):
        body = {"model": "smart", "messages": HI, "stream": True, "max_tokens": 2}
        async with http.stream("POST", "/v1/chat/completions", json=body) as escalated:
            assert escalated.headers["x-atomr-deployment"] == "big"
            text = _sse_text((await escalated.aread()).decode())
        assert text == "Echo: hi"
        assert _chat_calls(big)[0]["stream"] is True
        assert _escalations(cluster, "small", "length") == 1.0

        body = {"model": "smart", "messages": HI, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as answered:
            assert answered.headers["x-atomr-deployment"] == "small"
            raw = (await answered.aread()).decode()
        assert _sse_text(raw) == "Echo: hi there"
        assert raw.rstrip().endswith("data: [DONE]")
        assert len(_chat_calls(big)) == 1


async def test_low_confidence_asks_the_step_for_logprobs_and_keeps_them_from_the_client() -> None:
    async with _cascade(escalate_when=["low_confidence"], min_mean_logprob=-0.5) as (
        http,
        cluster,
        small,
        big,
    ):
        small.token_logprob = -0.1  # confident: the small step answers
        answer = await http.post("/v1/chat/completions", json={"model": "smart", "messages": HI})
        assert answer.headers["x-atomr-deployment"] == "small"
        assert _chat_calls(small)[0]["logprobs"] is True
        assert answer.json()["choices"][0].get("logprobs") is None
        assert _chat_calls(big) == []
        small.token_logprob = -2.0  # unsure: the answer escalates to the big step
        for stream in (False, True):
            body = {"model": "smart", "messages": HI, "stream": stream}
            answer = await http.post("/v1/chat/completions", json=body)
            assert answer.headers["x-atomr-deployment"] == "big"
            assert "logprobs" not in _chat_calls(big)[-1]  # the last step is not judged
        assert _escalations(cluster, "small", "low_confidence") == 2
        # a client that asks for logprobs gets the answering step's own
        body = {"model": "smart", "messages": HI, "logprobs": True}
        answer = await http.post("/v1/chat/completions", json=body)
        content = answer.json()["choices"][0]["logprobs"]["content"]
        assert [t["logprob"] for t in content] == [-0.05] * len(content) and content


async def test_a_step_failing_before_output_escalates_and_a_bad_request_does_not() -> None:
    async with _cascade() as (http, cluster, small, big):
        small.inject_5xx(1)
        failed = await http.post("/v1/chat/completions", json={"model": "smart", "messages": HI})
        assert failed.status_code == 200
        assert failed.headers["x-atomr-deployment"] == "big"
        assert _escalations(cluster, "small", "error") == 1.0

        small.inject_status(400)
        refused = await http.post("/v1/chat/completions", json={"model": "smart", "messages": HI})
        assert refused.status_code == 400
        assert len(_chat_calls(big)) == 1


async def test_every_front_door_takes_a_pipeline_name() -> None:
    async with _cascade() as (http, _cluster, small, big):
        assert small.requests == big.requests == []
        completion = await http.post(
            "/v1/completions", json={"model": "smart", "prompt": "hi", "max_tokens": 1}
        )
        assert completion.status_code == 200
        assert completion.headers["x-atomr-deployment"] == "big"
        messages = await http.post(
            "/v1/messages", json={"model": "smart", "messages": HI, "max_tokens": 50}
        )
        assert messages.status_code == 200, messages.text
        assert messages.headers["x-atomr-deployment"] == "small"
        assert messages.json()["content"][0]["text"] == "Echo: hi there"
        responses = await http.post("/v1/responses", json={"model": "smart", "input": "hi there"})
        assert responses.status_code == 200, responses.text
        assert responses.headers["x-atomr-deployment"] == "small"
        counted = await http.post(
            "/v1/messages/count_tokens", json={"model": "smart", "messages": HI}
        )
        assert counted.status_code == 200


async def test_models_and_status_list_the_pipelines() -> None:
    async with mock_openai() as east, mock_openai() as west:
        deployments = [_openai("east", east), _openai("west", west)]
        pipelines = [
            {"name": "any", "kind": "balance", "members": ["east", "west"]},
            {"name": "smart", "kind": "cascade", "steps": ["east", "any"]},
        ]
        async with _gateway(deployments, pipelines) as (http, _cluster):
            ids = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
            assert ids == ["east", "west", "any", "smart"]
            one = (await http.get("/v1/models/any")).json()
            assert one == {
                "id": "any",
                "object": "model",
                "created": 0,
                "owned_by": "atomr-pipeline",
            }
            # a cascade step may be a balance
            answer = await http.post(
                "/v1/chat/completions", json={"model": "smart", "messages": HI}
            )
            assert answer.headers["x-atomr-deployment"] == "east"
            status = (await http.get("/v1/status")).json()
            smart = next(p for p in status["pipelines"] if p["name"] == "smart")
            assert smart["kind"] == "cascade" and smart["steps"] == ["east", "any"]
            balance = next(p for p in status["pipelines"] if p["name"] == "any")
            assert balance["strategy"] == "latency"
            assert [m["name"] for m in balance["members"]] == ["east", "west"]
            assert all(m["usable"] for m in balance["members"])


# -- balance -------------------------------------------------------------------------


@asynccontextmanager
async def _balance(
    strategy: str = "latency",
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, MockOpenAIServer, MockOpenAIServer]]:
    async with mock_openai() as fast, mock_openai() as slow:
        deployments = [_openai("fast", fast), _openai("slow", slow)]
        spec = {"name": "any", "kind": "balance", "members": ["fast", "slow"], "strategy": strategy}
        async with _gateway(deployments, [spec]) as (http, cluster):
            yield http, cluster, fast, slow


async def test_a_slowed_member_loses_the_traffic_to_the_fast_one() -> None:
    async with _balance() as (http, _cluster, fast, slow):
        for _ in range(300):
            slow.slow_first_byte(0.2)
        answered: list[str] = []
        for _ in range(200):
            r = await http.post("/v1/chat/completions", json={"model": "any", "messages": HI})
            assert r.status_code == 200
            answered.append(r.headers["x-atomr-deployment"])
    assert answered.count("fast") >= 160, answered.count("fast")
    assert len(_chat_calls(slow)) == answered.count("slow")
    assert len(_chat_calls(fast)) == answered.count("fast")


async def test_an_open_circuit_member_gets_no_requests() -> None:
    async with _balance("least_outstanding") as (http, cluster, fast, slow):
        cluster.breaker("slow").force_open(600)
        for _ in range(20):
            r = await http.post("/v1/chat/completions", json={"model": "any", "messages": HI})
            assert r.status_code == 200
            assert r.headers["x-atomr-deployment"] == "fast"
        assert _chat_calls(slow) == []
        assert len(_chat_calls(fast)) == 20
        status = (await http.get("/v1/status")).json()
        members = status["pipelines"][0]["members"]
        assert [(m["name"], m["usable"]) for m in members] == [("fast", True), ("slow", False)]


async def test_a_member_failing_before_output_falls_to_the_next() -> None:
    async with _balance("least_outstanding") as (http, _cluster, fast, slow):
        fast.inject_5xx(1)
        r = await http.post("/v1/chat/completions", json={"model": "any", "messages": HI})
        # the pick (fast: least outstanding, first in a tie) answered 503; the other served
        assert r.status_code == 200
        assert r.headers["x-atomr-deployment"] == "slow"
        assert (len(_chat_calls(fast)), len(_chat_calls(slow))) == (1, 1)


async def test_a_pipeline_refuses_what_a_deployment_that_may_answer_cannot_honour() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    async with mock_openai() as big:
        text_only = {"name": "local", "model": "mock", "runtime": "mock"}
        deployments = [text_only, _openai("big", big, "gpt-4o")]
        pipelines = [
            {"name": "smart", "kind": "cascade", "steps": ["local", "big"]},
            {
                "name": "lax",
                "kind": "cascade",
                "steps": ["local", "big"],
                "escalate_when": ["length"],
            },
            {"name": "pool", "kind": "balance", "members": ["big", "local"]},
        ]
        async with _gateway(deployments, pipelines) as (http, _cluster):
            for door, body in [
                ("/v1/chat/completions", {"model": "smart", "messages": HI, "tools": tools}),
                (
                    "/v1/chat/completions",
                    {"model": "pool", "messages": HI, "response_format": SCHEMA},
                ),
                (
                    "/v1/chat/completions",
                    {"model": "lax", "messages": HI, "response_format": SCHEMA},
                ),
                ("/v1/responses", {"model": "pool", "input": "hi", "top_logprobs": 2}),
            ]:
                refused = await http.post(door, json=body)
                assert refused.status_code == 400, (door, body["model"], refused.text)
                assert "the mock runtime" in refused.text
            messages = await http.post(
                "/v1/messages",
                json={
                    "model": "pool",
                    "messages": HI,
                    "max_tokens": 5,
                    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                },
            )
            assert messages.status_code == 400
            assert messages.json()["error"]["type"] == "invalid_request_error"
            # a cascade that validates JSON before returning a step's answer takes it
            ok = await http.post(
                "/v1/chat/completions",
                json={"model": "smart", "messages": HI, "response_format": SCHEMA},
            )
            assert ok.status_code == 200
            assert big.requests == [] or ok.headers["x-atomr-deployment"] == "big"
            counted = await http.post(
                "/v1/messages/count_tokens",
                json={
                    "model": "pool",
                    "messages": HI,
                    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                },
            )
            assert counted.status_code == 200
