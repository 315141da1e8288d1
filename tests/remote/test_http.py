"""The HTTP client seam: options, redaction and error mapping against a real server."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from atomr_infer_core import Timeouts
from atomr_infer_core.errors import NetworkError, RequestTimeoutError
from atomr_infer_remote._http import (
    HttpClientOptions,
    client_timeout,
    map_http_errors,
    open_http_client,
    redacted_url,
)
from atomr_infer_testkit import mock_openai


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redacted_url_drops_query_and_userinfo() -> None:
    url = "https://user:pw@example.com:8443/v1beta/models/x:generate?key=SECRET"
    assert redacted_url(url) == "https://example.com:8443/v1beta/models/x:generate"


def test_client_timeout_comes_from_timeouts() -> None:
    t = client_timeout(Timeouts(request_timeout=30, read_timeout=7, connect_timeout=3))
    assert (t.connect, t.read, t.write, t.pool) == (3, 7, 7, 30)


async def test_client_sends_user_agent_and_headers() -> None:
    options = HttpClientOptions(headers={"x-extra": "1"}, user_agent="ua/1")
    async with mock_openai() as server, open_http_client(options, base_url=server.url) as client:
        resp = await client.get("/v1/models")
    assert resp.status_code == 200
    assert server.requests[0].headers["user-agent"] == "ua/1"
    assert server.requests[0].headers["x-extra"] == "1"


async def test_connection_refused_is_network_error() -> None:
    port = _closed_port()
    async with open_http_client() as client:
        with pytest.raises(NetworkError) as info, map_http_errors(provider="openai"):
            await client.get(f"http://127.0.0.1:{port}/v1/models?key=SECRET")
    assert "SECRET" not in str(info.value)
    assert f"http://127.0.0.1:{port}/v1/models" in str(info.value)


async def test_read_timeout_is_request_timeout(autojump_clock: trio.testing.MockClock) -> None:
    options = HttpClientOptions(timeouts=Timeouts(read_timeout=2.0))
    async with mock_openai() as server, open_http_client(options, base_url=server.url) as client:
        server.slow_first_byte(5.0)
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        start = trio.current_time()
        with pytest.raises(RequestTimeoutError) as info, map_http_errors(provider="openai"):
            await client.post("/v1/chat/completions", json=body)
        assert trio.current_time() - start == pytest.approx(2.0)
    assert info.value.phase == "read"


async def test_dropped_body_is_network_error() -> None:
    async with mock_openai() as server, open_http_client(base_url=server.url) as client:
        server.drop_after(1)
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        with pytest.raises(NetworkError, match="RemoteProtocolError"):
            with map_http_errors(provider="openai"):
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    async for _ in resp.aiter_bytes():
                        pass


def test_non_transport_errors_pass_through() -> None:
    with pytest.raises(KeyError), map_http_errors():
        raise KeyError("x")
    with pytest.raises(httpx.HTTPStatusError), map_http_errors():
        request = httpx.Request("GET", "http://x/")
        httpx.Response(500, request=request).raise_for_status()
