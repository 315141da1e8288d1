"""The fast upstream client: ``send_streaming`` on the client's pool sends what httpx would,
decodes what httpx would, and fails the way httpx would (against real loopback servers);
off by config or on an httpcore it was not tested on, the client is plain httpx."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from atomr_infer_core.errors import NetworkError
from atomr_infer_remote import _fastclient
from atomr_infer_remote._fastclient import FastResponse, FastTransport
from atomr_infer_remote._http import (
    HttpClientOptions,
    map_http_errors,
    open_http_client,
    send_streaming,
)
from atomr_infer_testkit import mock_openai

BODY = {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}


@asynccontextmanager
async def _server(app: Any) -> AsyncIterator[str]:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config))
        yield binds[0]
        nursery.cancel_scope.cancel()


def _echo_app(seen: list[dict[str, Any]], *, gzipped: bool = False, cookie: bool = False) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[1]  # startup / shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.append({"path": scope["path"], "headers": headers, "body": body})
        payload = b'{"ok": true}'
        out = [(b"content-type", b"application/json")]
        if gzipped:
            payload = gzip.compress(payload)
            out.append((b"content-encoding", b"gzip"))
        if cookie:
            out.append((b"set-cookie", b"session=abc; Path=/"))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": payload})

    return app


async def _read(response: Any) -> bytes:
    try:
        return b"".join([part async for part in response.aiter_bytes()])
    finally:
        await response.aclose()


async def test_lean_request_matches_httpx_on_the_wire() -> None:
    seen: list[dict[str, Any]] = []
    async with _server(_echo_app(seen)) as url, open_http_client(base_url=url + "/v1") as client:
        await (await client.post("/chat", json=BODY, headers={"authorization": "Bearer k"})).aread()
        response = await send_streaming(
            client,
            "POST",
            "/chat",
            headers={"authorization": "Bearer k"},
            json=BODY,
            connect_timeout=5.0,
        )
        assert isinstance(response, FastResponse)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert json.loads(await _read(response)) == {"ok": True}
    assert seen[0] == seen[1]
    assert seen[1]["path"] == "/v1/chat"


async def test_lean_response_is_content_decoded() -> None:
    seen: list[dict[str, Any]] = []
    async with _server(_echo_app(seen, gzipped=True)) as url, open_http_client() as client:
        response = await send_streaming(
            client, "POST", url + "/x", headers={}, json=BODY, connect_timeout=5.0
        )
        assert json.loads(await _read(response)) == {"ok": True}


async def test_cookies_are_kept_and_sent_back_like_httpx() -> None:
    seen: list[dict[str, Any]] = []
    async with _server(_echo_app(seen, cookie=True)) as url, open_http_client() as client:
        for _ in range(2):
            response = await send_streaming(
                client, "POST", url + "/x", headers={}, json=BODY, connect_timeout=5.0
            )
            await _read(response)
        assert client.cookies.get("session") == "abc"
    assert "cookie" not in seen[0]["headers"]
    assert seen[1]["headers"]["cookie"] == "session=abc"


async def test_connection_refused_names_the_url_without_query() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with open_http_client() as client:
        with pytest.raises(NetworkError, match="ConnectError") as info:
            with map_http_errors(provider="openai"):
                await send_streaming(
                    client,
                    "POST",
                    f"http://127.0.0.1:{port}/v1/x?key=SECRET",
                    headers={},
                    json=BODY,
                    connect_timeout=5.0,
                )
    assert "SECRET" not in str(info.value)
    assert f"http://127.0.0.1:{port}/v1/x" in str(info.value)


async def test_dropped_body_is_network_error() -> None:
    async with mock_openai() as server, open_http_client(base_url=server.url) as client:
        server.drop_after(1)
        response = await send_streaming(
            client,
            "POST",
            "/v1/chat/completions",
            headers={},
            json={**BODY, "stream": True},
            connect_timeout=5.0,
        )
        assert isinstance(response, FastResponse)
        with pytest.raises(NetworkError, match="RemoteProtocolError") as info:
            with map_http_errors(provider="openai"):
                await _read(response)
    assert f"{server.url}/v1/chat/completions" in str(info.value)


async def test_clients_with_event_hooks_take_the_httpx_path() -> None:
    seen: list[dict[str, Any]] = []
    hooked: list[str] = []

    async def hook(request: httpx.Request) -> None:
        hooked.append(str(request.url))

    async with _server(_echo_app(seen)) as url, open_http_client() as client:
        client.event_hooks = {"request": [hook], "response": []}
        response = await send_streaming(
            client, "POST", url + "/x", headers={}, json=BODY, connect_timeout=5.0
        )
        assert isinstance(response, httpx.Response)
        await _read(response)
    assert hooked == [url + "/x"]


async def test_an_idle_connection_the_server_closed_is_not_reused_between_sweeps() -> None:
    """Between full sweeps the pool still checks the idle connection it reuses."""
    closed = trio.Event()
    connections = 0
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        await stream.send_all(reply)
        if connections == 1:
            await stream.aclose()  # the server drops the connection once it is idle
            closed.set()
        else:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_http_client() as client:
            transport = _fastclient.transport_for(client)
            assert isinstance(transport, FastTransport)
            pool = transport.pool
            url = f"http://127.0.0.1:{port}/x"
            for _ in range(2):
                pool._last_sweep = time.monotonic()  # no full sweep: the fast pool decides
                response = await send_streaming(
                    client, "POST", url, headers={}, json=BODY, connect_timeout=5.0
                )
                assert await _read(response) == b"{}"
                await closed.wait()
        nursery.cancel_scope.cancel()
    assert connections == 2


async def test_the_fast_client_is_bounded_to_the_httpcore_releases_it_was_tested_on() -> None:
    assert _fastclient.supported("1.0.9")
    assert _fastclient.supported("1.0.0")
    assert not _fastclient.supported("1.1.0")
    assert not _fastclient.supported("0.18.0")
    assert not _fastclient.supported("2.0.0.dev1")


@pytest.mark.parametrize("why", ["opted out", "untested httpcore"])
async def test_without_the_fast_client_requests_go_through_plain_httpx(
    monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    options = HttpClientOptions()
    if why == "opted out":
        options = HttpClientOptions(fast_client=False)
    else:
        monkeypatch.setattr(_fastclient.httpcore, "__version__", "1.1.0")
    seen: list[dict[str, Any]] = []
    async with _server(_echo_app(seen)) as url, open_http_client(options, base_url=url) as client:
        assert _fastclient.transport_for(client) is None
        response = await send_streaming(
            client,
            "POST",
            "/x",
            headers={"authorization": "Bearer k"},
            json=BODY,
            connect_timeout=5.0,
        )
        assert isinstance(response, httpx.Response)
        assert json.loads(await _read(response)) == {"ok": True}
    assert seen[0]["path"] == "/x"
    assert seen[0]["headers"]["authorization"] == "Bearer k"
    assert json.loads(seen[0]["body"]) == BODY


async def test_httpx_requests_on_a_fast_client_share_its_pool() -> None:
    seen: list[dict[str, Any]] = []
    async with _server(_echo_app(seen)) as url, open_http_client(base_url=url) as client:
        transport = _fastclient.transport_for(client)
        assert transport is not None
        reply = await client.post("/x", json=BODY)
        assert reply.json() == {"ok": True}
        fast = await send_streaming(
            client, "POST", "/x", headers={}, json=BODY, connect_timeout=5.0
        )
        assert isinstance(fast, FastResponse)
        await _read(fast)
        assert len(transport.pool.connections) == 1  # one connection served both paths
    assert seen[0]["body"] == seen[1]["body"]
