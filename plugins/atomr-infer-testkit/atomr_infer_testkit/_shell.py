"""``python -m atomr_infer mock PROVIDER``: a mock provider server from the shell.

The same servers the tests use (real loopback HTTP, the provider's wire format), served
until Ctrl-C, with the fault controls of :mod:`._mock_server` over HTTP so a user can try
a project file and a fault scenario without an API key.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._mock_anthropic import MockAnthropicServer
from ._mock_gemini import MockGeminiServer
from ._mock_openai import MockOpenAIServer
from ._mock_server import MockProviderServer, open_mock_server

__all__ = ["MOCK_PROVIDERS", "MockProvider", "mock_banner", "run_mock", "serve_mock"]


@attrs.frozen
class MockProvider:
    """A mock the ``mock`` command serves, and how a project file points at it."""

    server: Callable[[], MockProviderServer]
    #: the runtime_config key and the value for a mock on ``url``
    config_key: str
    config_value: Callable[[str], str]
    #: the environment variables the files in examples/ read: (URL variable, value), key
    url_env: str
    url_env_value: Callable[[str], str]
    key_env: str


MOCK_PROVIDERS: dict[str, MockProvider] = {
    "openai": MockProvider(
        MockOpenAIServer,
        "base_url",
        "{}/v1".format,
        "OPENAI_BASE_URL",
        "{}/v1".format,
        "OPENAI_API_KEY",
    ),
    "anthropic": MockProvider(
        MockAnthropicServer,
        "base_url",
        "{}/v1".format,
        "ANTHROPIC_BASE_URL",
        "{}".format,
        "ANTHROPIC_API_KEY",
    ),
    "gemini": MockProvider(
        MockGeminiServer,
        "endpoint",
        "{}/v1beta/".format,
        "GEMINI_ENDPOINT",
        "{}/v1beta/".format,
        "GEMINI_API_KEY",
    ),
}


def mock_banner(provider: str, url: str, api_key: str | None) -> str:
    """What ``mock`` prints once it listens: where it is, how to point a config, the controls."""
    mock = MOCK_PROVIDERS[provider]
    key = f"only the key {api_key!r}" if api_key else "any API key"
    return (
        f"mock {provider} server on {url} (accepts {key})\n"
        f'  in [deployment.runtime_config]: {mock.config_key} = "{mock.config_value(url)}"\n'
        f"  for the files in examples/: export {mock.url_env}={mock.url_env_value(url)} "
        f"{mock.key_env}={api_key or 'sk-mock'}\n"
        f"  inject a fault:  curl -X POST {url}/_mock/faults "
        """-d '{"fault": "status", "status": 429, "retry_after": 1}'\n"""
        "                  (status, slow_first_byte, stall_after, drop_after, malformed_after,"
        " error_event_after; see docs/mock.md)\n"
        f"  requests seen:   curl {url}/_mock/requests\n"
        f"  reset:           curl -X POST {url}/_mock/reset\n"
        "  Ctrl-C stops it."
    )


async def serve_mock(
    provider: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ``provider`` mock until cancelled; ``task_status.started(url)`` once bound.

    Raises ``KeyError`` for an unknown provider (see :data:`MOCK_PROVIDERS`).
    """
    server = MOCK_PROVIDERS[provider].server()
    server.require_api_key(api_key)
    async with open_mock_server(server, host=host, port=port) as running:
        task_status.started(running.url)
        await trio.sleep_forever()


async def _run_until_signal(provider: str, host: str, port: int, api_key: str | None) -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve_mock(
                provider, host=host, port=port, api_key=api_key, task_status=task_status
            )
        )
        print(mock_banner(provider, url, api_key), flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def run_mock(provider: str, *, host: str, port: int, api_key: str | None) -> int:
    """The ``mock`` command: serve until SIGINT or SIGTERM, then exit 0 (1 if it cannot bind)."""
    try:
        trio.run(_run_until_signal, provider, host, port, api_key)
    except OSError as exc:
        print(f"atomr-infer mock: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        bind_errors, rest = group.split(OSError)
        if bind_errors is None or rest is not None:
            raise
        print(
            f"atomr-infer mock: cannot listen on {host}:{port}: {_first_leaf(bind_errors)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
