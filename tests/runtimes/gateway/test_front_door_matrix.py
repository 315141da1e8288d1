"""The front-door conformance matrix: ingress dialect x target runtime x case.

Ingress: Chat Completions and Responses (the official ``openai`` client) and Messages (the
official ``anthropic`` client). Targets: openai, anthropic, gemini and litellm
deployments on the testkit's mock provider servers (real loopback HTTP), and the local
``mock`` runtime. Cases: plain, stream, tool call, structured output, error.

Every cell either works, asserted on the body the upstream recorded and on the client's
parsed result, or is one of the documented 400s in :data:`REFUSED` (docs/front-doors.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anthropic
import attrs
import openai
import pytest

from atomr_infer_anthropic import PLUGIN as ANTHROPIC
from atomr_infer_core import Deployment, RetryPolicy
from atomr_infer_gemini import PLUGIN as GEMINI
from atomr_infer_litellm import _runtime as litellm_plugin
from atomr_infer_openai import _plugin as openai_plugin
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import (
    MockProviderServer,
    mock_anthropic,
    mock_gemini,
    mock_openai,
    mock_runtime_plugin,
)

INGRESS = ("chat", "responses", "messages")
TARGETS = ("openai", "anthropic", "gemini", "litellm", "mock")
CASES = ("plain", "stream", "tool_call", "structured", "error")

PROMPT = "hello there"
TOOL_SCHEMA = {"type": "object", "properties": {"input": {"type": "string"}}}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "words": {"type": "integer"}},
    "required": ["answer", "words"],
    "additionalProperties": False,
}
UPSTREAM_MODEL = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5-20250929",
    "gemini": "gemini-2.5-flash",
    "litellm": "litellm/gpt-4o-mini",
}
#: the field each ingress names a refused structured-output request by
STRUCTURED_FIELD = {
    "chat": "response_format",
    "responses": "text.format",
    "messages": "output_config.format",
}
#: the documented 400 ``unsupported_parameter`` cells: (target, case) → refused field
REFUSED: dict[tuple[str, str], str | None] = {
    ("mock", "tool_call"): "tools",
    ("mock", "structured"): None,  # STRUCTURED_FIELD of the ingress
}


@attrs.frozen
class Result:
    """What the client parsed, in one shape across dialects."""

    text: str = ""
    tool: tuple[str, dict[str, Any]] | None = None


@attrs.frozen
class Refusal:
    status: int
    message: str
    param: str | None
    retry_after: str | None = None
    kind: str | None = None


# ---------------------------------------------------------------- the environment


@attrs.define
class Env:
    url: str
    servers: dict[str, MockProviderServer]


@asynccontextmanager
async def matrix_env() -> AsyncIterator[Env]:
    async with AsyncExitStack() as stack:
        servers: dict[str, MockProviderServer] = {
            "openai": await stack.enter_async_context(mock_openai()),
            "anthropic": await stack.enter_async_context(mock_anthropic()),
            "gemini": await stack.enter_async_context(mock_gemini()),
            "litellm": await stack.enter_async_context(mock_openai()),
        }
        no_retry = RetryPolicy(max_retries=0)
        config = {
            "openai": {"base_url": f"{servers['openai'].url}/v1", "api_key": "sk-oai"},
            "anthropic": {"base_url": f"{servers['anthropic'].url}/v1", "api_key": "sk-ant"},
            "gemini": {"endpoint": f"{servers['gemini'].url}/v1beta/", "api_key": "AIza-g"},
            "litellm": {"base_url": f"{servers['litellm'].url}/v1"},
        }
        deployments = [
            Deployment(
                name=target,
                model=UPSTREAM_MODEL[target],
                runtime=target,
                runtime_config=config[target],
                retry=no_retry,
            )
            for target in config
        ]
        deployments += [
            Deployment(name="mock", model="mock", runtime="mock", retry=no_retry),
            Deployment(
                name="mock-error",
                model="mock",
                runtime="mock",
                runtime_config={"fail_with": "rate_limited"},
                retry=no_retry,
            ),
        ]
        plugins = [openai_plugin, ANTHROPIC, GEMINI, litellm_plugin, mock_runtime_plugin()]
        cluster = await stack.enter_async_context(
            open_cluster(deployments, plugins=plugins, load_entry_points=False)
        )
        url = await stack.enter_async_context(open_gateway(cluster, port=0))
        yield Env(url=url, servers=servers)


# ---------------------------------------------------------------- the three clients

Call = Callable[[str, str], Awaitable[Result]]


def _tool_args(raw: str | dict[str, Any]) -> dict[str, Any]:
    return raw if isinstance(raw, dict) else json.loads(raw)


async def _chat(url: str, model: str, case: str) -> Result:
    messages = [{"role": "user", "content": PROMPT}]
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
        if case == "stream":
            stream = await client.chat.completions.create(
                model=model, messages=messages, stream=True
            )  # type: ignore[call-overload]
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return Result(text="".join(parts))
        extra: dict[str, Any] = {}
        if case == "tool_call":
            function = {"name": "lookup", "parameters": TOOL_SCHEMA}
            extra["tools"] = [{"type": "function", "function": function}]
        if case == "structured":
            spec = {"name": "answer", "schema": SCHEMA, "strict": True}
            extra["response_format"] = {"type": "json_schema", "json_schema": spec}
        reply = await client.chat.completions.create(model=model, messages=messages, **extra)  # type: ignore[call-overload]
        message = reply.choices[0].message
        if message.tool_calls:
            call = message.tool_calls[0].function
            return Result(tool=(call.name, _tool_args(call.arguments)))
        return Result(text=message.content or "")


async def _responses(url: str, model: str, case: str) -> Result:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
        if case == "stream":
            stream = await client.responses.create(model=model, input=PROMPT, stream=True)
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            return Result(text="".join(deltas))
        extra: dict[str, Any] = {}
        if case == "tool_call":
            extra["tools"] = [{"type": "function", "name": "lookup", "parameters": TOOL_SCHEMA}]
        if case == "structured":
            fmt = {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}
            extra["text"] = {"format": fmt}
        reply = await client.responses.create(model=model, input=PROMPT, **extra)
        calls = [item for item in reply.output if item.type == "function_call"]
        if calls:
            return Result(tool=(calls[0].name, _tool_args(calls[0].arguments)))
        return Result(text=reply.output_text)


async def _messages(url: str, model: str, case: str) -> Result:
    messages = [{"role": "user", "content": PROMPT}]
    async with anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as client:
        if case == "stream":
            async with client.messages.stream(
                model=model, max_tokens=256, messages=messages
            ) as stream:  # type: ignore[arg-type]
                texts = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
            assert "".join(texts) == "".join(b.text for b in final.content if b.type == "text")
            return Result(text="".join(texts))
        extra: dict[str, Any] = {}
        if case == "tool_call":
            extra["tools"] = [{"name": "lookup", "input_schema": TOOL_SCHEMA}]
        if case == "structured":
            extra["output_config"] = {"format": {"type": "json_schema", "schema": SCHEMA}}
        reply = await client.messages.create(
            model=model, max_tokens=256, messages=messages, **extra
        )  # type: ignore[arg-type]
        for block in reply.content:
            if block.type == "tool_use":
                assert reply.stop_reason == "tool_use"
                return Result(tool=(block.name, _tool_args(block.input)))  # type: ignore[arg-type]
        return Result(text="".join(b.text for b in reply.content if b.type == "text"))


CLIENTS: dict[str, Callable[[str, str, str], Awaitable[Result]]] = {
    "chat": _chat,
    "responses": _responses,
    "messages": _messages,
}


async def _refusal(ingress: str, url: str, model: str, case: str) -> Refusal:
    try:
        await CLIENTS[ingress](url, model, case)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        body: Any = exc.body
        if ingress == "messages":
            assert body["type"] == "error"
            error = body["error"]
            return Refusal(
                exc.status_code,
                error["message"],
                None,
                exc.response.headers.get("retry-after"),
                error["type"],
            )
        return Refusal(
            exc.status_code,
            body["message"],
            body.get("param"),
            exc.response.headers.get("retry-after"),
            body.get("code"),
        )
    raise AssertionError(f"{ingress} → {model} ({case}) answered instead of refusing")


# ---------------------------------------------------------------- what the upstream saw


def _upstream_prompt(target: str, body: dict[str, Any]) -> str:
    if target == "gemini":
        return body["contents"][-1]["parts"][0]["text"]
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def _upstream_tool(target: str, body: dict[str, Any]) -> str:
    if target == "anthropic":
        return body["tools"][0]["name"]
    if target == "gemini":
        return body["tools"][0]["functionDeclarations"][0]["name"]
    return body["tools"][0]["function"]["name"]


def _upstream_schema(target: str, body: dict[str, Any]) -> Any:
    if target == "anthropic":
        return body["output_config"]["format"]["schema"]
    if target == "gemini":
        return body["generationConfig"]["responseJsonSchema"]
    return body["response_format"]["json_schema"]["schema"]


def _check_passthrough(case: str, request: Any) -> None:
    """A Responses client on an openai deployment: its own body reached ``/responses``."""
    body = request.json
    assert request.path == "/v1/responses"
    assert (body["model"], body["input"]) == (UPSTREAM_MODEL["openai"], PROMPT)
    assert bool(body.get("stream")) == (case == "stream")
    if case == "tool_call":
        assert body["tools"] == [{"type": "function", "name": "lookup", "parameters": TOOL_SCHEMA}]
    if case == "structured":
        assert body["text"]["format"]["schema"] == SCHEMA


def _check_upstream(ingress: str, target: str, case: str, server: MockProviderServer) -> None:
    request = server.requests[-1]
    body = request.json
    if (ingress, target) == ("responses", "openai"):
        _check_passthrough(case, request)
        return
    assert _upstream_prompt(target, body) == PROMPT
    if target == "gemini":
        assert UPSTREAM_MODEL[target] in request.path
        assert ("streamGenerateContent" in request.path) == (case == "stream")
    else:
        assert body["model"] == UPSTREAM_MODEL[target].removeprefix("litellm/")
        assert bool(body.get("stream")) == (case == "stream")
    if case == "tool_call":
        assert _upstream_tool(target, body) == "lookup"
    if case == "structured":
        assert _upstream_schema(target, body) == SCHEMA


# ---------------------------------------------------------------- the matrix


async def _cell(env: Env, ingress: str, target: str, case: str) -> None:
    if (target, case) in REFUSED:
        field = REFUSED[(target, case)] or STRUCTURED_FIELD[ingress]
        refusal = await _refusal(ingress, env.url, target, case)
        assert refusal.status == 400
        assert f"'{field}'" in refusal.message
        assert f"the {target} runtime" in refusal.message
        if ingress == "messages":
            assert refusal.kind == "invalid_request_error"
        else:
            assert (refusal.param, refusal.kind) == (field, "unsupported_parameter")
        return
    if case == "error":
        server = env.servers.get(target)
        if server is not None:
            server.inject_status(429, retry_after=3)
        refusal = await _refusal(ingress, env.url, target if server else "mock-error", case)
        assert refusal.status == 429
        if ingress == "messages":
            assert refusal.kind == "rate_limit_error"
        if server is not None:
            assert refusal.retry_after == "3"
        return
    before = len(env.servers[target].requests) if target in env.servers else 0
    result = await CLIENTS[ingress](env.url, target, case)
    if target == "mock":
        assert result == Result(text="Hello, world!")
        return
    server = env.servers[target]
    assert len(server.requests) == before + 1
    _check_upstream(ingress, target, case, server)
    if case == "tool_call":
        assert result == Result(tool=("lookup", {"input": PROMPT}))
    elif case == "structured":
        assert json.loads(result.text) == {"answer": PROMPT, "words": 2}
    else:
        assert result == Result(text=f"Echo: {PROMPT}")


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("ingress", INGRESS)
async def test_front_door_matrix(ingress: str, target: str) -> None:
    async with matrix_env() as env:
        for case in CASES:
            try:
                await _cell(env, ingress, target, case)
            except AssertionError as exc:
                raise AssertionError(f"cell {ingress} x {target} x {case}: {exc}") from exc
