"""Acceptance on the embedded smollm2 through the gateway with the official openai client:
20 json_schema requests and 20 tool_choice=required requests, all validating; free
requests answer the same greedy text with constrained neighbours in the batch."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
import trio

from atomr_infer_core import ClusterConfig, Config, Deployment, Serving, Timeouts
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_torch import DEFAULT_DEPLOYMENTS, _plugin

pytestmark = pytest.mark.slow

SMOLLM2 = next(d for d in DEFAULT_DEPLOYMENTS if d.name == "smollm2")

_name = {"type": "string", "maxLength": 24}
SCHEMAS: list[dict[str, Any]] = [
    {  # required fields and an enum
        "type": "object",
        "properties": {"city": _name, "country": _name, "size": {"enum": ["small", "big"]}},
        "required": ["city", "country", "size"],
        "additionalProperties": False,
    },
    {  # a nested object
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": _name,
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                },
                "required": ["name", "age"],
                "additionalProperties": False,
            }
        },
        "required": ["person"],
        "additionalProperties": False,
    },
    {  # an array of enums, bounded
        "type": "object",
        "properties": {
            "colors": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue"]},
                "minItems": 1,
                "maxItems": 3,
            },
            "ok": {"type": "boolean"},
        },
        "required": ["colors", "ok"],
        "additionalProperties": False,
    },
    {  # an array of objects
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "n": {"type": "integer", "minimum": 1, "maximum": 9},
                        "what": _name,
                    },
                    "required": ["n", "what"],
                    "additionalProperties": False,
                },
                "maxItems": 3,
            }
        },
        "required": ["steps"],
        "additionalProperties": False,
    },
]
QUESTIONS = [
    "Tell me about Paris.",
    "Describe a person you know.",
    "Which colors does the flag of France have?",
    "How do I make tea?",
    "What is the biggest city in Japan?",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": _name, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_flights",
            "description": "Find flights between two airports on a date",
            "parameters": {
                "type": "object",
                "properties": {
                    "origin": _name,
                    "destination": _name,
                    "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["origin", "destination", "passengers"],
                "additionalProperties": False,
            },
        },
    },
]
TOOL_QUESTIONS = [
    "What is the weather like in Berlin?",
    "Find me a flight from Paris to Rome for two people.",
    "Is it raining in London right now?",
    "I need to fly from Tokyo to Osaka.",
]
FREE = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three fruits."}],
]


async def test_json_schema_and_required_tool_calls_validate_through_the_gateway() -> None:
    deployment = Deployment(
        name="smollm2",
        model=SMOLLM2.model,
        runtime="torch",
        runtime_config=dict(SMOLLM2.runtime_config),
        serving=Serving(max_concurrent=48),
        # 42 prompts prefilled on a shared 2-core machine: the last first token comes late
        timeouts=Timeouts(request_timeout=600.0, read_timeout=600.0),
    )
    config = Config(cluster=ClusterConfig(bind="127.0.0.1:0"), deployments=(deployment,))
    schema_replies: list[tuple[dict[str, Any], Any]] = []
    tool_replies: list[Any] = []
    free_beside: dict[int, str] = {}
    streamed: list[Any] = []

    async with open_cluster(config, plugins=[_plugin], load_entry_points=False) as cluster:
        async with open_gateway(cluster) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            async with client:
                free_alone = [
                    (
                        await client.chat.completions.create(
                            model="smollm2", messages=m, max_tokens=24
                        )
                    )
                    .choices[0]
                    .message.content
                    for m in FREE
                ]

                async def schema_request(i: int) -> None:
                    schema = SCHEMAS[i % len(SCHEMAS)]
                    reply = await client.chat.completions.create(
                        model="smollm2",
                        messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                        max_tokens=160,
                        response_format={
                            "type": "json_schema",
                            "json_schema": {"name": f"s{i % 4}", "schema": schema},
                        },
                    )
                    schema_replies.append((schema, reply))

                async def tool_request(i: int) -> None:
                    reply = await client.chat.completions.create(
                        model="smollm2",
                        messages=[{"role": "user", "content": TOOL_QUESTIONS[i % 4]}],
                        max_tokens=120,
                        tools=TOOLS,
                        tool_choice="required",
                    )
                    tool_replies.append(reply)

                async def free_request(i: int) -> None:
                    reply = await client.chat.completions.create(
                        model="smollm2", messages=FREE[i], max_tokens=24
                    )
                    free_beside[i] = reply.choices[0].message.content

                async def streamed_tool_request() -> None:
                    stream = await client.chat.completions.create(
                        model="smollm2",
                        messages=[{"role": "user", "content": TOOL_QUESTIONS[0]}],
                        max_tokens=120,
                        tools=TOOLS,
                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                        stream=True,
                    )
                    streamed.extend([c async for c in stream])

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(streamed_tool_request)
                    for i in range(20):
                        nursery.start_soon(schema_request, i)
                        nursery.start_soon(tool_request, i)
                    for i in range(len(FREE)):
                        nursery.start_soon(free_request, i)

    assert len(schema_replies) == 20 and len(tool_replies) == 20
    for schema, reply in schema_replies:
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for reply in tool_replies:
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])
    assert [free_beside[i] for i in range(len(FREE))] == free_alone
    deltas = [d for c in streamed if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    assert [d.function.name for d in deltas] == ["get_weather"]
    arguments = json.loads("".join(d.function.arguments for d in deltas))
    jsonschema.validate(arguments, by_name["get_weather"])
