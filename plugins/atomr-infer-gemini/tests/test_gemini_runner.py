"""The gemini runner against the testkit's mock Gemini server over real loopback HTTP."""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from atomr_infer_core import (
    Deployment,
    FinishReason,
    SamplingParams,
    Secret,
    TokenUsage,
)
from atomr_infer_core.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    ForbiddenError,
    UnauthorizedError,
)
from atomr_infer_gemini import PLUGIN, PRICES, CommandCredential, GeminiConfig, GeminiRunner
from atomr_infer_remote import CallableCredential
from atomr_infer_testkit import MockProviderServer, mock_gemini
from atomr_infer_testkit.contract import ContractAdapter, RunnerContractSuite, collect

MODEL = "gemini-2.5-flash"


def studio(server: MockProviderServer, **kw: Any) -> GeminiConfig:
    kw.setdefault("api_key", Secret("AIza-test"))
    return GeminiConfig(endpoint=f"{server.url}/v1beta/", **kw)


ADAPTER = ContractAdapter(
    plugin=PLUGIN,
    runtime_config=lambda server: {"endpoint": f"{server.url}/v1beta/", "api_key": "AIza-test"},
    model=MODEL,
    serve=mock_gemini,
    frames_before_text=0,
    input_tokens=4,
)
deployment, batch = ADAPTER.deployment, ADAPTER.batch


def open_runner(
    server: MockProviderServer,
    dep: Deployment | None = None,
    config: GeminiConfig | None = None,
    **services: Any,
) -> AbstractAsyncContextManager[Any]:
    """The runner on AI Studio by default, or with ``config`` (Vertex AI, safety, …)."""
    adapter = ADAPTER
    if config is not None:
        adapter = attrs.evolve(ADAPTER, make_runner=lambda _, d, c: GeminiRunner(d, config, c))
    return adapter.runner(server, dep, **services)


@pytest.fixture
def runner_contract() -> ContractAdapter:
    return ADAPTER


class TestGeminiRunnerContract(RunnerContractSuite):
    """429, 5xx, 401, broken streams, cancellation, usage and tools: the shared scenarios."""


# -- happy paths ------------------------------------------------------------------------


async def test_ai_studio_json_sends_the_key_and_maps_usage_and_cost() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.thoughts_tokens = 10
        server.cached_tokens = 2
        _, tokens = await collect(runner, batch(sampling=SamplingParams(temperature=0.1)))
    assert tokens.text == "Echo: hello world"
    assert tokens.finish_reason is FinishReason.STOP
    assert tokens.usage == TokenUsage(
        input_tokens=4, output_tokens=13, reasoning_tokens=10, cached_tokens=2
    )
    sent = server.requests[0]
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == "AIza-test"  # the original never sent it
    assert sent.json == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "hello world"}]}],
        "generationConfig": {"temperature": 0.1},
    }
    # 2 uncached at $0.30, 2 cached at $0.03, 13 output at $2.50 (per million)
    assert PRICES.cost(MODEL, tokens.usage) == pytest.approx((2 * 0.3 + 2 * 0.03 + 13 * 2.5) / 1e6)


async def test_stream_exact_chunks_usage_and_safety_settings() -> None:
    async with mock_gemini() as server:
        config = PLUGIN.structure_config(
            {
                "endpoint": f"{server.url}/v1beta/",
                "api_key": "k",
                "safety": [
                    {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
                ],
            }
        )
        async with open_runner(server, config=config) as runner:
            chunks, tokens = await collect(runner, batch(stream=True))
    assert [c.text_delta for c in chunks if c.text_delta] == ["Echo:", " hello", " world"]
    assert tokens.usage == TokenUsage(input_tokens=4, output_tokens=3)
    sent = server.requests[0]
    assert sent.path.endswith(":streamGenerateContent") and sent.query == "alt=sse"
    assert sent.json["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
    ]


async def test_two_candidates_and_max_tokens() -> None:
    sampling = SamplingParams(n=2, max_tokens=2)
    async with mock_gemini() as server, open_runner(server) as runner:
        _, tokens = await collect(runner, batch(stream=True, sampling=sampling))
    assert [c.text for c in tokens.choices] == ["Echo: hello", "Echo #1:"]
    assert tokens.choices[0].finish_reason is FinishReason.LENGTH
    assert tokens.choices[1].finish_reason is FinishReason.LENGTH


# -- Vertex AI --------------------------------------------------------------------------


async def test_vertex_url_and_bearer_token_refreshed_after_401(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("ya29.old\n")
    async with mock_gemini() as server:
        config = GeminiConfig(
            variant="vertex",
            project="proj",
            location="europe-west4",
            endpoint=server.url,
            access_token_file=str(token_file),
        )
        server.require_api_key("ya29.new")
        async with open_runner(server, config=config) as runner:
            token_file.write_text("ya29.new\n")  # rotated by an outside refresher
            _, tokens = await collect(runner, batch())
    assert tokens.text == "Echo: hello world"
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer ya29.old",
        "Bearer ya29.new",
    ]
    assert server.requests[0].path == (
        f"/v1/projects/proj/locations/europe-west4/publishers/google/models/{MODEL}:generateContent"
    )


async def test_vertex_token_is_refreshed_on_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    issued: list[float] = []

    async def fetch() -> str:
        issued.append(trio.current_time())
        return f"tok-{len(issued) - 1}"

    async with mock_gemini() as server:
        config = GeminiConfig(
            variant="vertex", project="p", endpoint=server.url, token_refresh_interval=600.0
        )
        credentials = CallableCredential(fetch)
        async with open_runner(server, config=config, credentials=credentials) as runner:
            start = trio.current_time()
            await collect(runner, batch())
            await trio.sleep(601.0)
            await collect(runner, batch())
    assert [r.headers["authorization"] for r in server.requests] == ["Bearer tok-0", "Bearer tok-1"]
    assert [t - start for t in issued] == [0.0, 600.0]


async def test_token_command_prints_the_token() -> None:
    script = "print('ya29.from-command')"
    secret = await CommandCredential((sys.executable, "-c", script)).credential()
    assert secret == Secret("ya29.from-command")


async def test_failing_token_command_is_unauthorized_with_advice() -> None:
    with pytest.raises(UnauthorizedError) as info:
        await CommandCredential((sys.executable, "-c", "import sys; sys.exit(3)")).credential()
    assert "exit 3" in info.value.message
    with pytest.raises(UnauthorizedError) as info:
        await CommandCredential(("/nonexistent/gcloud",)).credential()
    assert "access_token" in info.value.message


# -- retries and the breaker ------------------------------------------------------------


async def test_unavailable_error_event_before_output_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.error_event_after(0)
        _, tokens = await collect(runner, batch(stream=True))
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


# -- typed errors -----------------------------------------------------------------------


async def test_token_limit_is_context_length_on_enter() -> None:
    async with mock_gemini(context_window=10) as server, open_runner(server) as runner:
        with pytest.raises(ContextLengthExceededError) as info:
            async with runner.execute(batch(sampling=SamplingParams(max_tokens=100))):
                pytest.fail("the error comes from __aenter__")  # pragma: no cover
    assert (info.value.tokens, info.value.max_tokens) == (104, 10)
    assert len(server.requests) == 1


async def test_blocked_prompt_is_content_filtered_in_json_and_stream() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        for stream in (False, True):
            with pytest.raises(ContentFilteredError) as info:
                await collect(runner, batch("FORBIDDEN words", stream=stream))
            assert info.value.reason == "SAFETY"
    assert len(server.requests) == 2


async def test_invalid_api_key_400_rebuilds_the_session() -> None:
    # AI Studio answers a bad key with 400 INVALID_ARGUMENT / API_KEY_INVALID, not 401
    keys = iter(["AIza-old", "AIza-new"])

    async def fetch() -> str:
        return next(keys)

    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            ],
        }
    }
    async with mock_gemini() as server:
        server.inject_status(400, body=body)
        async with open_runner(server, credentials=CallableCredential(fetch)) as runner:
            _, tokens = await collect(runner, batch())
    assert tokens.text == "Echo: hello world"
    assert [r.headers["x-goog-api-key"] for r in server.requests] == ["AIza-old", "AIza-new"]


async def test_permission_denied_is_forbidden_and_bad_key_unauthorized() -> None:
    async with mock_gemini() as server, open_runner(server) as runner:
        server.inject_status(403)
        with pytest.raises(ForbiddenError):
            await collect(runner, batch())
        server.require_api_key("another-key")
        with pytest.raises(UnauthorizedError):
            await collect(runner, batch())


# -- through the gateway ----------------------------------------------------------------


async def test_blocked_prompt_is_a_400_content_filter_at_the_gateway() -> None:
    async with mock_gemini() as server, ADAPTER.gateway(server) as http:
        body = {"model": "contract", "messages": [{"role": "user", "content": "FORBIDDEN"}]}
        resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "content_filter"


# -- the plugin -------------------------------------------------------------------------


def test_plugin_registers_gemini_patterns_and_prices() -> None:
    assert PLUGIN.name == "gemini"
    assert PLUGIN.package == "atomr-infer-gemini"
    assert "gemini-*" in PLUGIN.model_patterns
    assert PLUGIN.prices.lookup("gemini-2.5-pro-preview-06-05") is not None


def test_vertex_needs_a_project() -> None:
    with pytest.raises(ValueError, match="project"):
        GeminiConfig(variant="vertex")
    vertex = GeminiConfig(variant="vertex", project="p", region="asia-east1")
    assert vertex.url("gemini-2.5-pro", stream=False).startswith(
        "https://asia-east1-aiplatform.googleapis.com/v1/projects/p/locations/asia-east1/"
    )
