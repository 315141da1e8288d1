"""Every project file in examples/ passes ``check`` and serves, against the testkit's mocks.

Each example reads its provider URLs and keys from the environment (``OPENAI_BASE_URL``,
``OPENAI_API_KEY``, …); the test starts the mock servers, makes each one require a key of
its own, and hands both to the example the way a user would, through the environment.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from atomr_infer import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockProviderServer, mock_anthropic, mock_gemini, mock_openai

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PLUGINS = "openai,anthropic,gemini,torch"
HI = [{"role": "user", "content": "hello there"}]

#: provider → (mock factory, URL variable, its value for a mock on url, key variable)
_PROVIDERS = {
    "openai": (mock_openai, "OPENAI_BASE_URL", "{}/v1", "OPENAI_API_KEY"),
    "anthropic": (mock_anthropic, "ANTHROPIC_BASE_URL", "{}", "ANTHROPIC_API_KEY"),
    "gemini": (mock_gemini, "GEMINI_ENDPOINT", "{}/v1beta/", "GEMINI_API_KEY"),
}


@asynccontextmanager
async def _mocks(
    monkeypatch: pytest.MonkeyPatch, *providers: str
) -> AsyncIterator[dict[str, MockProviderServer]]:
    """The mocks, each requiring a fresh key, with the variables the examples read set."""
    monkeypatch.setenv("ATOMR_INFER_LOAD_PLUGINS", PLUGINS)
    monkeypatch.delenv("ATOMR_API_KEY", raising=False)
    async with AsyncExitStack() as stack:
        servers = {}
        for name in providers:
            factory, url_var, url_value, key_var = _PROVIDERS[name]
            server = await stack.enter_async_context(factory())
            key = f"sk-{name}-{secrets.token_hex(8)}"
            server.require_api_key(key)
            monkeypatch.setenv(url_var, url_value.format(server.url))
            monkeypatch.setenv(key_var, key)
            servers[name] = server
        yield servers


def _check(example: str) -> subprocess.CompletedProcess[str]:
    path = EXAMPLES / example / "atomr.toml"
    return subprocess.run(
        [sys.executable, "-m", "atomr_infer", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=120,
    )


@asynccontextmanager
async def _serving(example: str) -> AsyncIterator[tuple[object, str]]:
    path = EXAMPLES / example / "atomr.toml"
    async with open_cluster(str(path)) as cluster, open_gateway(cluster, port=0) as url:
        yield cluster, url


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def _chat(client: openai.OpenAI, model: str = "chat") -> str:
    reply = await trio.to_thread.run_sync(
        lambda: client.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
    )
    return str(reply.choices[0].message.content)


def test_every_example_has_a_readme_and_is_tested() -> None:
    found = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert found == ["fallback", "fleet", "limits", "local-escalation", "openai"]
    for name in found:
        assert (EXAMPLES / name / "README.md").is_file()
        assert (EXAMPLES / name / "atomr.toml").is_file()


@pytest.mark.parametrize(
    ("example", "providers", "deployments"),
    [
        ("openai", ("openai",), ["chat", "embed"]),
        ("fallback", ("openai", "anthropic", "gemini"), ["chat", "chat-claude", "chat-gemini"]),
        ("limits", ("openai",), ["chat"]),
        ("fleet", ("openai",), ["chat"]),
        ("local-escalation", ("openai",), ["chat", "chat-remote"]),
    ],
)
async def test_check_accepts_the_example(
    example: str,
    providers: tuple[str, ...],
    deployments: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _mocks(monkeypatch, *providers):
        result = await trio.to_thread.run_sync(_check, example)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[2:]
    assert [row.split()[0] for row in rows] == deployments


async def test_check_names_the_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMR_INFER_LOAD_PLUGINS", PLUGINS)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = await trio.to_thread.run_sync(_check, "openai")
    assert result.returncode == 1
    assert "environment variable OPENAI_API_KEY is not set" in result.stderr


async def test_openai_example_serves_chat_and_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    async with _mocks(monkeypatch, "openai") as mocks, _serving("openai") as (_, url):
        client = _client(url)
        assert await _chat(client) == "Echo: hello there"
        vectors = await trio.to_thread.run_sync(
            lambda: client.embeddings.create(model="embed", input=["a", "b"])
        )
    assert len(vectors.data) == 2
    assert [r.path for r in mocks["openai"].requests] == ["/v1/chat/completions", "/v1/embeddings"]


async def test_fallback_example_falls_through_to_claude_then_gemini(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        _mocks(monkeypatch, "openai", "anthropic", "gemini") as mocks,
        _serving("fallback") as (_, url),
    ):
        client = _client(url)
        assert await _chat(client) == "Echo: hello there"  # OpenAI answers
        mocks["openai"].inject_5xx(2)  # the attempt and its one retry fail: Claude answers
        assert await _chat(client) == "Echo: hello there"
        mocks["openai"].inject_5xx(1)  # the breaker's third failure opens it: the retry fails fast
        mocks["anthropic"].inject_5xx(2)  # and Claude fails too: Gemini answers
        assert await _chat(client) == "Echo: hello there"
        assert await _chat(client) == "Echo: hello there"  # circuit open: straight to Claude
    assert len(mocks["openai"].requests) == 4
    assert len(mocks["anthropic"].requests) == 4
    assert len(mocks["gemini"].requests) == 1


async def test_limits_example_wants_the_gateway_key_and_holds_the_rate(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    # the clock stands still: a request past the 3 per minute can never be let through
    # before its 5 s deadline, so it is refused at once with Retry-After
    async with _mocks(monkeypatch, "openai") as mocks, _serving("limits") as (_, url):
        with pytest.raises(openai.AuthenticationError):
            await _chat(_client(url, "wrong"))
        client = _client(url, "sk-local-dev")  # the ${ATOMR_API_KEY:-sk-local-dev} default
        for _ in range(3):
            assert await _chat(client) == "Echo: hello there"
        with pytest.raises(openai.RateLimitError) as caught:
            await _chat(client)
    # the first of the three leaves the rolling minute 60 s from now
    assert caught.value.response.headers["retry-after"] == "60"
    assert len(mocks["openai"].requests) == 3


async def test_fleet_example_holds_one_rate_limit_across_two_gateways(
    monkeypatch: pytest.MonkeyPatch, redis_server: Any
) -> None:
    # two gateways on the same file and the same Redis: six requests a minute in all
    monkeypatch.setenv("ATOMR_REDIS_URL", redis_server.url)
    async with (
        _mocks(monkeypatch, "openai") as mocks,
        _serving("fleet") as (_, first),
        _serving("fleet") as (_, second),
    ):
        clients = [_client(first), _client(second)]
        for i in range(6):
            assert await _chat(clients[i % 2]) == "Echo: hello there"
        with pytest.raises(openai.RateLimitError) as caught:
            await _chat(clients[0])  # the window is full for the fleet, not just this gateway
    assert 0 < int(caught.value.response.headers["retry-after"]) <= 60
    assert len(mocks["openai"].requests) == 6


@pytest.mark.slow
async def test_local_escalation_example_escalates_when_the_local_model_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("atomr_infer_torch")
    async with _mocks(monkeypatch, "openai") as mocks, _serving("local-escalation") as (cl, url):
        question = [{"role": "user", "content": "What is the capital of France?"}]
        local = await trio.to_thread.run_sync(
            lambda: _client(url).chat.completions.create(model="chat", messages=question)  # type: ignore[arg-type]
        )
        # what examples/local-escalation/README.md shows (greedy decoding: always this)
        assert local.choices[0].message.content == "The capital of France is Paris."
        assert mocks["openai"].requests == []
        async with AsyncExitStack() as held:
            for _ in range(4):  # the local deployment's max_concurrent
                await held.enter_async_context(
                    cl.stream("chat", messages=HI, max_tokens=8)  # type: ignore[attr-defined]
                )
            assert await _chat(_client(url)) == "Echo: hello there"
    assert len(mocks["openai"].requests) == 1
