"""The runner contract: one list of scenarios every remote provider plugin passes.

Each scenario runs a provider's runner against that provider's own mock server (real
loopback HTTP, the real wire format) and asserts what every runtime must do the same way:
a 429 with ``Retry-After`` is retried after exactly that delay, a 5xx is retried with
backoff and opens the breaker, a 401 rebuilds the session with a fresh credential, a
stream dropped or broken after output raises a typed error without repeating text,
leaving a stream closes the upstream response, usage is reported, tool calls arrive in
OpenAI's shape, the plugin's declared model patterns claim its model; and behind a real
Cluster and gateway a context overflow is a 400, a 429 past the deadline keeps its ``Retry-After``, a dropped stream ends with an error event, a
client that disconnects closes the upstream. A plugin's own tests keep only what is
specific to its wire.

A plugin runs the suite with a fixture named ``runner_contract`` that returns its
:class:`ContractAdapter`, and a test class that inherits :class:`RunnerContractSuite`::

    import pytest
    from atomr_infer_anthropic import PLUGIN
    from atomr_infer_testkit import mock_anthropic
    from atomr_infer_testkit.contract import ContractAdapter, RunnerContractSuite

    @pytest.fixture
    def runner_contract() -> ContractAdapter:
        return ContractAdapter(
            model="claude-sonnet-4-5-20250929",
            serve=mock_anthropic,
            plugin=PLUGIN,
            runtime_config=lambda server: {"base_url": f"{server.url}/v1", "api_key": "k"},
            frames_before_text=3,
            input_tokens=4,
        )

    class TestAnthropicRunnerContract(RunnerContractSuite):
        pass

This module imports pytest; the rest of the testkit does not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from atomr_infer_core import (
    CircuitBreakerConfig,
    Deployment,
    ExecuteBatch,
    FinishReason,
    JitterKind,
    Message,
    RetryPolicy,
    RunnerContext,
    RuntimePlugin,
    TokenChunk,
    Tokens,
)
from atomr_infer_core.errors import (
    CircuitOpenError,
    MalformedStreamError,
    NetworkError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
)
from atomr_infer_remote import CallableCredential, CircuitBreaker, EngineRunner, RateLimiter

from ._mock_server import MockProviderServer

__all__ = [
    "SCENARIOS",
    "ContractAdapter",
    "RunnerContractSuite",
    "Scenario",
    "collect",
]

#: what the mock servers answer to the contract's prompt, as the stream's text deltas
ECHO = ["Echo:", " hello", " world"]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


MakeRunner = Callable[[MockProviderServer, Deployment, RunnerContext], EngineRunner]


@attrs.frozen(kw_only=True)
class ContractAdapter:
    """What the contract needs to know of one provider plugin.

    Attributes:
        plugin: the plugin's ``RuntimePlugin``.
        runtime_config: a deployment's ``[runtime_config]`` table pointed at ``server``
            (``{"base_url": f"{server.url}/v1", "api_key": "k"}``); the runner is built as
            the cluster builds it, by ``plugin.structure_config`` and ``plugin.create``.
        model: a model id the plugin serves.
        serve: opens the provider's mock server (``mock_openai``, ``mock_anthropic``, …);
            keyword arguments such as ``context_window`` go to the mock.
        frames_before_text: how many stream frames the mock sends before the one that
            carries the first text delta (OpenAI's role chunk, Anthropic's
            ``message_start``, ``content_block_start`` and ``ping``, …).
        input_tokens: the input tokens the mock counts for the contract's prompt (a system
            message "Be brief." and a user message "hello world").
        tools_stream: whether the provider's stream carries tool calls the mock can send.
        make_runner: only for a plugin's own tests of a config that is not a table (a
            config object built in the test): builds the runner instead of the plugin.
    """

    plugin: RuntimePlugin
    runtime_config: Callable[[MockProviderServer], Mapping[str, Any]]
    model: str
    serve: Callable[..., AbstractAsyncContextManager[MockProviderServer]]
    frames_before_text: int
    input_tokens: int
    tools_stream: bool = True
    make_runner: MakeRunner | None = None

    def deployment(self, **kw: Any) -> Deployment:
        kw.setdefault(
            "retry", RetryPolicy(max_retries=3, initial_backoff=1.0, jitter=JitterKind.NONE)
        )
        return Deployment(name="contract", model=self.model, **kw)

    def batch(self, text: str = "hello world", *, stream: bool = False, **kw: Any) -> ExecuteBatch:
        messages = [Message(role="system", content="Be brief."), Message(role="user", content=text)]
        return ExecuteBatch(
            request_id="contract-1", model=self.model, messages=messages, stream=stream, **kw
        )

    @asynccontextmanager
    async def runner(
        self, server: MockProviderServer, deployment: Deployment | None = None, **services: Any
    ) -> AsyncIterator[EngineRunner]:
        """The plugin's runner, started in a nursery this block owns."""
        dep = deployment or self.deployment()
        services.setdefault("limiter", RateLimiter(dep.rate_limits, name=dep.name))
        services.setdefault(
            "breaker",
            CircuitBreaker(dep.circuit_breaker, name=dep.name, provider=self.plugin.name),
        )
        context = RunnerContext(services=services)
        if self.make_runner is not None:
            runner = self.make_runner(server, dep, context)
        else:
            config = self.plugin.structure_config(dict(self.runtime_config(server)))
            runner = self.plugin.create(dep, config, context)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            yield runner
            nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def gateway(self, server: MockProviderServer) -> AsyncIterator[httpx.AsyncClient]:
        """The plugin behind a real Cluster and gateway (one deployment named ``contract``)
        pointed at ``server``, and an HTTP client for the gateway."""
        # imported here: only the gateway scenarios need the runtime layer
        from atomr_infer_core.config import load_config
        from atomr_infer_runtimes import open_cluster
        from atomr_infer_runtimes.gateway import open_gateway

        deployment = {
            "name": "contract",
            "model": self.model,
            "runtime_config": dict(self.runtime_config(server)),
            "retry": {"jitter": "none"},
        }
        config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": [deployment]})
        async with open_cluster(config, plugins=[self.plugin], load_entry_points=False) as cluster:
            async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
                yield http


@attrs.frozen
class Scenario:
    """One contract scenario; ``timed`` ones run on an autojumping MockClock."""

    name: str
    run: Callable[[ContractAdapter], Awaitable[None]] = attrs.field(repr=False)
    timed: bool = False


async def collect(runner: EngineRunner, batch: ExecuteBatch) -> tuple[list[TokenChunk], Tokens]:
    """Run ``batch`` to the end: its chunks, and the Tokens they make."""
    chunks: list[TokenChunk] = []
    async with runner.execute(batch) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks, Tokens.from_chunks(chunks)


async def _texts_until_failure(
    runner: EngineRunner, batch: ExecuteBatch, error: type[Exception]
) -> list[str]:
    texts: list[str] = []
    with pytest.raises(error):
        async with runner.execute(batch) as stream:
            async for chunk in stream:
                if chunk.text_delta:
                    texts.append(chunk.text_delta)
    return texts


# -- the scenarios ----------------------------------------------------------------------


async def usage_json_and_stream(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        _, whole = await collect(runner, adapter.batch())
        chunks, streamed = await collect(runner, adapter.batch(stream=True))
    for tokens in (whole, streamed):
        assert tokens.text == "Echo: hello world"
        assert tokens.finish_reason is FinishReason.STOP
        assert (tokens.usage.input_tokens, tokens.usage.output_tokens) == (adapter.input_tokens, 3)
    assert [c.text_delta for c in chunks if c.text_delta] == ECHO
    assert chunks[-1].usage is not None  # the usage comes with the last chunk
    assert server.streams_completed == 1


async def tool_calls(adapter: ContractAdapter) -> None:
    modes = (False, True) if adapter.tools_stream else (False,)
    async with adapter.serve() as server, adapter.runner(server) as runner:
        for stream in modes:
            _, tokens = await collect(
                runner, adapter.batch("find cats", stream=stream, tools=TOOLS)
            )
            assert tokens.finish_reason is FinishReason.TOOL_CALLS
            [call] = tokens.choices[0].tool_calls
            assert call["type"] == "function" and call["id"]
            assert call["function"]["name"] == "lookup"
            assert json.loads(call["function"]["arguments"]) == {"input": "find cats"}


async def rate_limited_429_waits_retry_after(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.inject_status(429, retry_after=7)
        start = trio.current_time()
        _, tokens = await collect(runner, adapter.batch())
        assert trio.current_time() - start == pytest.approx(7.0)
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


async def rate_limited_past_the_deadline_is_raised(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.inject_status(429, retry_after=120)  # past the default 60 s deadline
        start = trio.current_time()
        with pytest.raises(RateLimitedError) as info:
            await collect(runner, adapter.batch())
        assert trio.current_time() == start
    assert info.value.retry_after == pytest.approx(120.0)
    assert len(server.requests) == 1


async def server_error_5xx_is_retried_with_backoff(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.inject_5xx(2, status=500)
        start = trio.current_time()
        _, tokens = await collect(runner, adapter.batch())
        assert trio.current_time() - start == pytest.approx(1.0 + 2.0)  # 1 s, then doubled
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 3


async def server_error_5xx_opens_the_breaker(adapter: ContractAdapter) -> None:
    dep = adapter.deployment(
        retry=RetryPolicy(max_retries=0),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, open_duration=30.0),
    )
    async with adapter.serve() as server, adapter.runner(server, dep) as runner:
        server.inject_5xx(3, status=500)
        for _ in range(2):
            with pytest.raises(ServerError):
                await collect(runner, adapter.batch())
        with pytest.raises(CircuitOpenError) as info:
            await collect(runner, adapter.batch())
        assert len(server.requests) == 2  # the third never left
        assert info.value.retry_after == pytest.approx(30.0)
        await trio.sleep(30.0)
        assert server.clear_faults() == 1
        _, tokens = await collect(runner, adapter.batch())  # the half-open probe
    assert tokens.text == "Echo: hello world"
    assert runner.statistics().breaker.state == "closed"


async def unauthorized_401_rebuilds_the_session(adapter: ContractAdapter) -> None:
    keys = iter(["key-old", "key-new"])

    async def fetch() -> str:
        return next(keys)

    async with adapter.serve() as server:
        server.require_api_key("key-new")
        credentials = CallableCredential(fetch)
        async with adapter.runner(server, credentials=credentials) as runner:
            _, tokens = await collect(runner, adapter.batch())
            assert runner.statistics().session_rebuilds == 1
    assert tokens.text == "Echo: hello world"
    assert [server.presented_key(r.headers) for r in server.requests] == ["key-old", "key-new"]


async def unauthorized_twice_is_raised(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.require_api_key("another-key")
        with pytest.raises(UnauthorizedError) as info:
            await collect(runner, adapter.batch())
    assert "another-key" not in str(info.value)
    assert len(server.requests) == 2  # one rebuild, then the error


async def drop_mid_stream_is_a_network_error(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.drop_after(adapter.frames_before_text + 2)
        texts = await _texts_until_failure(runner, adapter.batch(stream=True), NetworkError)
    assert texts == ECHO[:2]
    assert len(server.requests) == 1  # never repeated after output


async def malformed_event_is_a_malformed_stream_error(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.malformed_after(adapter.frames_before_text + 2)
        texts = await _texts_until_failure(runner, adapter.batch(stream=True), MalformedStreamError)
    assert texts == ECHO[:2]
    assert len(server.requests) == 1


async def leaving_the_stream_closes_the_upstream(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.stall_after(adapter.frames_before_text + 1)
        async with runner.execute(adapter.batch(stream=True)) as stream:
            async for chunk in stream:
                if chunk.text_delta:
                    break
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
        assert runner.statistics().in_flight == 0
    assert server.aborted_streams == 1
    assert server.streams_completed == 0


async def cancelled_caller_closes_the_upstream(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.runner(server) as runner:
        server.stall_after(adapter.frames_before_text + 1)
        got_text = trio.Event()

        async def caller() -> None:
            async with runner.execute(adapter.batch(stream=True)) as stream:
                async for chunk in stream:
                    if chunk.text_delta:
                        got_text.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            with trio.fail_after(5):
                await got_text.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
        assert runner.statistics().in_flight == 0
        _, tokens = await collect(runner, adapter.batch())  # the runner still serves
    assert tokens.text == "Echo: hello world"


def _sse_payloads(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def _chat_request(*, stream: bool = False) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hello big world"}]
    return {"model": "contract", "messages": messages, "stream": stream}


async def gateway_context_length_is_400(adapter: ContractAdapter) -> None:
    async with adapter.serve(context_window=1) as server, adapter.gateway(server) as http:
        resp = await http.post("/v1/chat/completions", json=_chat_request())
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert len(server.requests) == 1


async def gateway_rate_limit_past_the_deadline_is_429(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.gateway(server) as http:
        server.inject_status(429, retry_after=120)
        resp = await http.post("/v1/chat/completions", json=_chat_request())
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "120"
    assert len(server.requests) == 1


async def gateway_drop_ends_the_stream_with_an_error_event(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.gateway(server) as http:
        server.drop_after(adapter.frames_before_text + 2)
        resp = await http.post("/v1/chat/completions", json=_chat_request(stream=True))
    payloads = _sse_payloads(resp.text)
    text = "".join(
        p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices")
    )
    assert text == "Echo: hello"  # no text repeated by a retry
    assert "error" in payloads[-1]
    assert "[DONE]" not in resp.text
    assert len(server.requests) == 1


async def gateway_client_disconnect_closes_the_upstream(adapter: ContractAdapter) -> None:
    async with adapter.serve() as server, adapter.gateway(server) as http:
        server.stall_after(adapter.frames_before_text + 1)
        request = _chat_request(stream=True)
        async with http.stream("POST", "/v1/chat/completions", json=request) as resp:
            async for part in resp.aiter_text():
                if "Echo:" in part:
                    break
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
    assert server.aborted_streams == 1


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("usage", usage_json_and_stream),
    Scenario("tools", tool_calls),
    Scenario("429-retry-after", rate_limited_429_waits_retry_after, timed=True),
    Scenario("429-past-deadline", rate_limited_past_the_deadline_is_raised, timed=True),
    Scenario("5xx-backoff", server_error_5xx_is_retried_with_backoff, timed=True),
    Scenario("5xx-breaker", server_error_5xx_opens_the_breaker, timed=True),
    Scenario("401-rebuild", unauthorized_401_rebuilds_the_session),
    Scenario("401-twice", unauthorized_twice_is_raised),
    Scenario("drop-mid-stream", drop_mid_stream_is_a_network_error),
    Scenario("malformed-event", malformed_event_is_a_malformed_stream_error),
    Scenario("leave-stream", leaving_the_stream_closes_the_upstream),
    Scenario("cancel", cancelled_caller_closes_the_upstream),
    Scenario("gateway-context-length", gateway_context_length_is_400),
    Scenario("gateway-429-past-deadline", gateway_rate_limit_past_the_deadline_is_429),
    Scenario("gateway-drop", gateway_drop_ends_the_stream_with_an_error_event),
    Scenario("gateway-disconnect", gateway_client_disconnect_closes_the_upstream),
)

_TIMED = [s for s in SCENARIOS if s.timed]
_UNTIMED = [s for s in SCENARIOS if not s.timed]


class RunnerContractSuite:
    """Inherit in a ``Test…`` class next to a ``runner_contract`` fixture (see above)."""

    @pytest.mark.parametrize("scenario", _UNTIMED, ids=lambda s: s.name)
    async def test_contract(self, scenario: Scenario, runner_contract: ContractAdapter) -> None:
        await scenario.run(runner_contract)

    @pytest.mark.parametrize("scenario", _TIMED, ids=lambda s: s.name)
    async def test_timed_contract(
        self,
        scenario: Scenario,
        runner_contract: ContractAdapter,
        autojump_clock: trio.testing.MockClock,
    ) -> None:
        await scenario.run(runner_contract)

    def test_the_declared_model_patterns_claim_the_model(
        self, runner_contract: ContractAdapter
    ) -> None:
        from atomr_infer_core import infer_runtime
        from atomr_infer_runtimes import PluginRegistry

        plugin = runner_contract.plugin
        registry = PluginRegistry()
        registry.add(plugin)  # the host feeds the plugin's patterns to infer_runtime
        try:
            assert infer_runtime(runner_contract.model) == plugin.name
        finally:
            registry.close()
        assert infer_runtime(runner_contract.model) is None
