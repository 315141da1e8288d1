"""The HTTP client of remote runtimes, and the one place httpx errors become typed errors.

:func:`open_http_client` builds an ``httpx.AsyncClient`` on trio (HTTP/2 over TLS when
``h2`` is installed, HTTP/1.1 over plaintext), with pool limits and timeouts from
:class:`~atomr_infer_core.Timeouts`. :func:`map_http_errors` turns httpx's transport
exceptions into :class:`~atomr_infer_core.errors.NetworkError` and
:class:`~atomr_infer_core.errors.RequestTimeoutError`; messages name the host and path
but never the query string (Gemini puts its key there) nor any header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import attrs
import httpx

from atomr_infer_core import Timeouts
from atomr_infer_core.errors import NetworkError, RequestTimeoutError

__all__ = ["HttpClientOptions", "map_http_errors", "open_http_client", "redacted_url"]

_USER_AGENT = "atomr-infer/0.1"


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

    The remote engine bounds first-byte and between-chunk waits with trio cancel scopes
    itself; the client's own timeouts are the backstop for direct use.
    """
    options = options or HttpClientOptions()
    limits = httpx.Limits(
        max_connections=options.max_connections,
        max_keepalive_connections=options.max_keepalive_connections,
        keepalive_expiry=options.keepalive_expiry,
    )
    headers = {"user-agent": options.user_agent, **options.headers}
    client = httpx.AsyncClient(
        base_url=base_url,
        http2=options.http2 and _http2_available(),
        limits=limits,
        timeout=client_timeout(options.timeouts),
        headers=headers,
        verify=options.verify,
        follow_redirects=False,
        trust_env=False,
    )
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
