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
import math
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import httpx

from atomr_infer_core import DISTRIBUTION, Timeouts, __version__
from atomr_infer_core.errors import BadRequestError, NetworkError, RequestTimeoutError

__all__ = [
    "HttpClientOptions",
    "LeanResponse",
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
    _use_lean_pool(client)
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


# -- the lean request path -------------------------------------------------------------
# httpx's per-request machinery (URL parsing and merging, header models, cookie and
# redirect handling, stream wrappers, logging) costs about as much as the exchange
# itself on a fast upstream. :func:`send_streaming` drives the client's own httpcore
# pool directly (same connections, TLS, HTTP/2 and limits) and falls back to
# ``client.send`` whenever the client uses anything the lean path does not reproduce
# (mounts or proxies, auth, event hooks, stored cookies).

try:  # httpx's own translation of httpcore errors, so both paths raise the same errors
    import httpcore
    from httpx._transports.default import AsyncResponseStream, map_httpcore_exceptions
except ImportError:  # pragma: no cover - an httpx without these internals: no lean path
    httpcore = None  # type: ignore[assignment]

_URL_CACHE_SIZE = 256
_IDENTITY = (b"", b"identity")


class _Lean:
    """What the lean path keeps per client: its pool, default headers, merged URLs."""

    __slots__ = ("default_headers", "pool", "urls")

    def __init__(self, client: httpx.AsyncClient, pool: Any) -> None:
        self.pool = pool
        self.default_headers = list(client.headers.raw)
        self.urls: dict[str, tuple[httpx.URL, Any, bytes]] = {}


_LEAN: weakref.WeakKeyDictionary[httpx.AsyncClient, _Lean | None] = weakref.WeakKeyDictionary()


def _lean_for(client: httpx.AsyncClient) -> _Lean | None:
    try:
        lean = _LEAN[client]
    except KeyError:
        lean = None
        transport = getattr(client, "_transport", None)
        pool = getattr(transport, "_pool", None)
        if (
            httpcore is not None
            and type(transport) is httpx.AsyncHTTPTransport
            and isinstance(pool, httpcore.AsyncConnectionPool)
            and not getattr(client, "_mounts", None)
        ):
            lean = _Lean(client, pool)
        _LEAN[client] = lean
    if lean is None or client.auth is not None or client.cookies.jar:
        return None
    if any(client.event_hooks.values()):
        return None
    return lean


class LeanResponse:
    """A streamed response of the lean path: ``status_code``, ``headers``,
    ``aiter_bytes()`` (content-decoded) and ``aclose()``, like ``httpx.Response``."""

    __slots__ = ("_headers", "_raw", "_request", "_stream", "status_code")

    def __init__(self, status: int, raw: list[tuple[bytes, bytes]], stream: Any, request: Any):
        self.status_code = status
        self._raw = raw
        self._headers: httpx.Headers | None = None
        self._stream = stream
        self._request = request

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = httpx.Headers(self._raw)
        return self._headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        for name, value in self._raw:
            if name.lower() == b"content-encoding" and value.strip().lower() not in _IDENTITY:
                # compressed: let httpx's decoders handle it
                response = httpx.Response(
                    self.status_code,
                    headers=self._raw,
                    stream=AsyncResponseStream(self._stream),
                    request=self._request(),
                )
                return _with_request(response.aiter_bytes(), self._request)
        return _with_request(self._raw_bytes(), self._request)

    async def _raw_bytes(self) -> AsyncIterator[bytes]:
        with map_httpcore_exceptions():
            async for part in self._stream:
                if part:
                    yield part

    async def aclose(self) -> None:
        with _request_on_errors(self._request), map_httpcore_exceptions():
            await self._stream.aclose()


@contextmanager
def _request_on_errors(make_request: Callable[[], httpx.Request]) -> Iterator[None]:
    # httpx attaches the request to transport errors; error messages name its URL
    try:
        yield
    except httpx.TransportError as exc:
        try:
            exc.request  # noqa: B018
        except RuntimeError:
            exc.request = make_request()
        raise


async def _with_request(
    parts: AsyncIterator[bytes], make_request: Callable[[], httpx.Request]
) -> AsyncIterator[bytes]:
    with _request_on_errors(make_request):
        async for part in parts:
            yield part


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
) -> httpx.Response | LeanResponse:
    """Send one request and return once the response head arrived (body not read).

    Raises httpx's transport errors exactly as ``client.send`` does (wrap the call in
    :func:`map_http_errors`). Cancellation closes the half-made exchange. The caller
    must ``aclose()`` the response.
    """
    timeout = {"connect": connect_timeout, "read": None, "write": None, "pool": None}
    body = b"" if json is None else encode_json_body(json)
    lean = _lean_for(client)
    if lean is None:
        content_headers = {"content-type": "application/json"} if json is not None else {}
        request = client.build_request(
            method,
            url,
            headers={**content_headers, **headers},
            content=body if json is not None else None,
            timeout=httpx.Timeout(**timeout),
        )
        return await client.send(request, stream=True)
    cached = lean.urls.get(url)
    if cached is None:
        merged = client._merge_url(url)
        core_url = httpcore.URL(
            scheme=merged.raw_scheme,
            host=merged.raw_host,
            port=merged.port,
            target=merged.raw_path,
        )
        host = merged.netloc
        cached = (merged, core_url, host)
        if len(lean.urls) < _URL_CACHE_SIZE:
            lean.urls[url] = cached
    merged, core_url, host = cached
    given = {name.lower().encode("ascii"): value for name, value in headers.items()}
    raw: list[tuple[bytes, bytes]] = [(b"Host", host)]
    for name, value in lean.default_headers:
        if name.lower() not in given:
            raw.append((name, value))
    for key, text in headers.items():
        raw.append((key.encode("ascii"), text.encode("ascii")))  # as httpx encodes them
    if json is not None:
        raw.append((b"Content-Length", str(len(body)).encode("ascii")))
        raw.append((b"Content-Type", b"application/json"))
    elif method in ("POST", "PUT", "PATCH") and b"content-length" not in given:
        raw.append((b"Content-Length", b"0"))

    def make_request() -> httpx.Request:
        return httpx.Request(method, merged, headers=raw)

    core_request = httpcore.Request(
        method=method.encode("ascii"),
        url=core_url,
        headers=raw,
        content=body,
        extensions={"timeout": timeout},
    )
    with _request_on_errors(make_request), map_httpcore_exceptions():
        response = await lean.pool.handle_async_request(core_request)
    result = LeanResponse(response.status, response.headers, response.stream, make_request)
    if any(name.lower() == b"set-cookie" for name, _ in response.headers):
        client.cookies.extract_cookies(
            httpx.Response(response.status, headers=response.headers, request=make_request())
        )
    return result


# -- the pool's bookkeeping --------------------------------------------------------------
# httpcore re-checks every pooled connection whenever a request comes or goes, and for
# each idle one that check is a poll() system call (did the server close it?): with a few
# dozen connections that is a few dozen system calls per request. The pool below sweeps
# every connection that way at most every ``_SWEEP_INTERVAL`` seconds, and otherwise
# checks only the idle connection it is about to reuse, so no request is ever sent on a
# connection the server closed and expired ones still close on the next sweep.

_SWEEP_INTERVAL = 1.0

if httpcore is not None and httpcore.__version__.startswith("1.0."):

    class _LeanPool(httpcore.AsyncConnectionPool):
        _last_sweep = -math.inf

        def _assign_requests_to_connections(self) -> list[Any]:
            now = time.monotonic()
            if now - self._last_sweep >= _SWEEP_INTERVAL:
                self._last_sweep = now
                return super()._assign_requests_to_connections()
            closing: list[Any] = []
            connections = self._connections
            for connection in list(connections):
                if connection.is_closed():
                    connections.remove(connection)
                elif not connection.is_idle() and connection.has_expired():
                    connections.remove(connection)
                    closing.append(connection)
                elif connection.is_idle() and len(connections) > self._max_keepalive_connections:
                    connections.remove(connection)
                    closing.append(connection)
            for pool_request in [r for r in self._requests if r.is_queued()]:
                origin = pool_request.request.url.origin
                chosen = None
                for connection in list(connections):
                    if not (connection.can_handle_request(origin) and connection.is_available()):
                        continue
                    if connection.is_idle() and connection.has_expired():
                        connections.remove(connection)
                        closing.append(connection)
                        continue
                    chosen = connection
                    break
                if chosen is None:
                    idle = [c for c in connections if c.is_idle()]
                    if len(connections) < self._max_connections:
                        chosen = self.create_connection(origin)
                        connections.append(chosen)
                    elif idle:
                        connections.remove(idle[0])
                        closing.append(idle[0])
                        chosen = self.create_connection(origin)
                        connections.append(chosen)
                if chosen is not None:
                    pool_request.assign_to_connection(chosen)
            return closing

else:  # pragma: no cover - another httpcore: keep its own pool
    _LeanPool = None  # type: ignore[assignment,misc]


def _use_lean_pool(client: httpx.AsyncClient) -> None:
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    if _LeanPool is not None and type(pool) is httpcore.AsyncConnectionPool:
        pool.__class__ = _LeanPool
