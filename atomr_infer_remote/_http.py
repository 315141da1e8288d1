"""The HTTP client of remote runtimes, and the one place httpx errors become typed errors.

:func:`open_http_client` builds an ``httpx.AsyncClient`` on trio (HTTP/2 over TLS when
``h2`` is installed, HTTP/1.1 over plaintext), with pool limits and timeouts from
:class:`~atomr_infer_core.Timeouts`. :func:`map_http_errors` turns httpx's transport
exceptions into :class:`~atomr_infer_core.errors.NetworkError` and
:class:`~atomr_infer_core.errors.RequestTimeoutError`; messages name the host and path
but never the query string (Gemini puts its key there) nor any header.
"""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import httpx

from atomr_infer_core import DISTRIBUTION, Timeouts, __version__
from atomr_infer_core.errors import BadRequestError, NetworkError, RequestTimeoutError

from . import _fastclient
from ._fastclient import FastResponse

__all__ = [
    "FastResponse",
    "HttpClientOptions",
    "encode_json_body",
    "map_http_errors",
    "open_http_client",
    "redacted_url",
    "send_streaming",
]

_USER_AGENT = f"{DISTRIBUTION}/{__version__}"


@attrs.frozen(kw_only=True)
class HttpClientOptions:
    """How a remote runtime's HTTP client is built."""

    timeouts: Timeouts = attrs.Factory(Timeouts)
    #: connections open at once, per client
    max_connections: int = 100
    #: idle connections kept for reuse
    max_keepalive_connections: int = 64
    #: how long an idle pooled connection is kept (seconds)
    keepalive_expiry: float = 90.0
    #: HTTP/2 where the server negotiates it over TLS (ALPN)
    http2: bool = True
    user_agent: str = _USER_AGENT
    #: headers sent with every request (not secrets: credentials go per request)
    headers: Mapping[str, str] = attrs.Factory(dict)
    #: TLS verification (a path to a CA bundle, or False for tests only)
    verify: bool | str = True
    #: the fast upstream client (:mod:`._fastclient`) where this httpcore is one it was
    #: tested on; False: plain httpx for every request
    fast_client: bool = True


def _http2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def client_timeout(timeouts: Timeouts) -> httpx.Timeout:
    """httpx timeouts for ``timeouts``: connect and pool from it, read between reads."""
    return httpx.Timeout(
        connect=timeouts.connect_timeout,
        read=timeouts.read_timeout,
        write=timeouts.read_timeout,
        pool=timeouts.request_timeout,
    )


@asynccontextmanager
async def open_http_client(
    options: HttpClientOptions | None = None, *, base_url: str = ""
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` for the block; closed (with its pool) on exit.

    With ``options.fast_client`` (the default) and an httpcore the fast client was tested
    on, the client is built on :class:`~._fastclient.FastTransport`, so the engine's
    requests can skip httpx's per-request layers; otherwise it is a plain httpx client.
    The remote engine bounds first-byte and between-chunk waits with trio cancel scopes
    itself; the client's own timeouts are the backstop for direct use.
    """
    options = options or HttpClientOptions()
    headers = {"user-agent": options.user_agent, **options.headers}
    http2 = options.http2 and _http2_available()
    common: dict[str, Any] = {
        "base_url": base_url,
        "timeout": client_timeout(options.timeouts),
        "headers": headers,
        "follow_redirects": False,
        "trust_env": False,
    }
    if options.fast_client and _fastclient.supported():
        transport = _fastclient.FastTransport(
            verify=options.verify,
            http2=http2,
            max_connections=options.max_connections,
            max_keepalive_connections=options.max_keepalive_connections,
            keepalive_expiry=options.keepalive_expiry,
        )
        client = httpx.AsyncClient(transport=transport, **common)
        _fastclient.adopt(client, transport)
    else:
        limits = httpx.Limits(
            max_connections=options.max_connections,
            max_keepalive_connections=options.max_keepalive_connections,
            keepalive_expiry=options.keepalive_expiry,
        )
        client = httpx.AsyncClient(http2=http2, limits=limits, verify=options.verify, **common)
    async with client:
        yield client


def redacted_url(url: httpx.URL | str) -> str:
    """``scheme://host[:port]/path`` without query, fragment or user info."""
    url = httpx.URL(str(url))
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def _where(exc: httpx.HTTPError) -> str:
    try:
        return redacted_url(exc.request.url)
    except RuntimeError:  # no request attached
        return "the upstream"


@contextmanager
def map_http_errors(*, provider: str = "upstream", elapsed: float | None = None) -> Iterator[None]:
    """Translate httpx transport errors raised in the block into typed errors.

    ``ReadTimeout`` → ``RequestTimeoutError(phase="read")``, ``ConnectTimeout`` →
    ``phase="connect"``, ``PoolTimeout`` → ``phase="queue"``, ``WriteTimeout`` →
    ``phase="write"``; every other transport error (refused, reset, protocol error, a
    connection closed mid-body) → ``NetworkError``. Other exceptions pass through.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        phase = {
            httpx.ReadTimeout: "read",
            httpx.ConnectTimeout: "connect",
            httpx.PoolTimeout: "queue",
            httpx.WriteTimeout: "write",
        }.get(type(exc), "read")
        raise RequestTimeoutError(
            f"{provider}: {phase} timeout talking to {_where(exc)}; the upstream is slow or "
            "unreachable (raise deployment.timeouts if this is expected)",
            phase=phase,
            elapsed_s=elapsed,
        ) from exc
    except httpx.TransportError as exc:
        detail = type(exc).__name__
        text = str(exc).split("\n")[0]
        if text:
            detail += f": {text}"
        raise NetworkError(
            f"{provider}: connection to {_where(exc)} failed ({detail}); check base_url and "
            "the network"
        ) from exc


def encode_json_body(value: Any) -> bytes:
    """``value`` as a compact UTF-8 JSON request body.

    Raises:
        BadRequestError: ``value`` holds something JSON cannot carry (NaN, infinity, a
            lone surrogate, nesting past the interpreter's limit, a non-JSON type): the
            request's content is at fault, so it fails alone, before anything is sent.
    """
    try:
        return _json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise BadRequestError(
            f"the request cannot be encoded for the upstream ({type(exc).__name__}: "
            f"{str(exc)[:200]}); send finite numbers and valid Unicode text"
        ) from None


async def send_streaming(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    json: Any,
    connect_timeout: float | None,
) -> httpx.Response | FastResponse:
    """Send one request and return once the response head arrived (body not read).

    On the fast client (:mod:`._fastclient`) when ``client`` allows it, else with
    ``client.send``. Raises httpx's transport errors either way (wrap the call in
    :func:`map_http_errors`). Cancellation closes the half-made exchange. The caller
    must ``aclose()`` the response.
    """
    timeout = {"connect": connect_timeout, "read": None, "write": None, "pool": None}
    body = None if json is None else encode_json_body(json)
    fast = _fastclient.transport_for(client)
    if fast is not None:
        return await fast.send(client, method, url, headers=headers, body=body, timeout=timeout)
    content_headers = {"content-type": "application/json"} if json is not None else {}
    request = client.build_request(
        method,
        url,
        headers={**content_headers, **headers},
        content=body,
        timeout=httpx.Timeout(**timeout),
    )
    return await client.send(request, stream=True)
