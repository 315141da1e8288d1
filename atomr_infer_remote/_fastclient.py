"""The fast upstream client: the engine's requests sent on httpcore's pool directly.

httpx's per-request machinery (URL parsing and merging, header models, cookie and
redirect handling, stream wrappers, logging) costs about as much as the exchange itself
on a fast upstream. :class:`FastTransport` is an ``httpx.AsyncBaseTransport`` (httpx's
public transport API) that owns an ``httpcore.AsyncConnectionPool``: a client built on it
is an ordinary ``httpx.AsyncClient`` for every other use, and :meth:`FastTransport.send`
gives the engine's hot path the same pool (connections, TLS, HTTP/2, limits) without
httpx's per-request layers. :func:`transport_for` says whether a client may take that
path: one made by ``open_http_client`` with the fast client on, and no auth, event hooks
or stored cookies (the fast path reproduces none of them).

Public API everywhere but one place: the pool's bookkeeping (:class:`_FastPool`) overrides
httpcore's ``_assign_requests_to_connections``, for which httpcore has no public hook. That
is why the fast client is bounded to the httpcore releases it was tested on
(:data:`TESTED_HTTPCORE`); on any other, :func:`supported` is false and ``open_http_client``
builds a plain httpx client. ``fast_client = false`` in a deployment's ``runtime_config``
opts out the same way.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

__all__ = ["TESTED_HTTPCORE", "FastResponse", "FastTransport", "supported", "transport_for"]

#: the httpcore releases the fast client was tested on: ``[first, stop)``
TESTED_HTTPCORE = ((1, 0, 0), (1, 1, 0))

_URL_CACHE_SIZE = 256
_IDENTITY = (b"", b"identity")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def supported(version: str | None = None) -> bool:
    """Whether this httpcore (or ``version``) is one the fast client was tested on."""
    found = _version(httpcore.__version__ if version is None else version)
    first, stop = TESTED_HTTPCORE
    return first <= found < stop


# -- httpcore's errors as httpx's (both name their classes alike) -----------------------
_ERRORS: Mapping[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}


@contextmanager
def _httpx_errors(make_request: Callable[[], httpx.Request] | None = None) -> Iterator[None]:
    """httpcore's exceptions raised as httpx's, with the request attached (error messages
    name its URL)."""
    try:
        yield
    except httpx.TransportError as exc:
        if make_request is not None:
            try:
                exc.request  # noqa: B018
            except RuntimeError:
                exc.request = make_request()
        raise
    except Exception as exc:
        mapped = next((_ERRORS[c] for c in type(exc).__mro__ if c in _ERRORS), None)
        if mapped is None:
            raise
        error = mapped(str(exc))
        if make_request is not None:
            error.request = make_request()
        raise error from exc


class _Body(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream (errors mapped, closed once)."""

    def __init__(self, stream: Any, make_request: Callable[[], httpx.Request] | None) -> None:
        self._stream = stream
        self._make_request = make_request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._make_request):
            async for part in self._stream:
                if part:
                    yield part

    async def aclose(self) -> None:
        with _httpx_errors(self._make_request):
            await self._stream.aclose()


class FastResponse:
    """A streamed response of the fast path: ``status_code``, ``headers``,
    ``aiter_bytes()`` (content-decoded) and ``aclose()``, like ``httpx.Response``."""

    __slots__ = ("_body", "_headers", "_raw", "_request", "status_code")

    def __init__(
        self,
        status: int,
        raw: list[tuple[bytes, bytes]],
        body: _Body,
        request: Callable[[], httpx.Request],
    ) -> None:
        self.status_code = status
        self._raw = raw
        self._headers: httpx.Headers | None = None
        self._body = body
        self._request = request

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = httpx.Headers(self._raw)
        return self._headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        for name, value in self._raw:
            if name.lower() == b"content-encoding" and value.strip().lower() not in _IDENTITY:
                # compressed: httpx's own decoders, through its public Response
                response = httpx.Response(
                    self.status_code, headers=self._raw, stream=self._body, request=self._request()
                )
                return response.aiter_bytes()
        return self._body.__aiter__()

    async def aclose(self) -> None:
        await self._body.aclose()


class FastTransport(httpx.AsyncBaseTransport):
    """An httpx transport on a pool the fast path can also drive (see the module)."""

    def __init__(
        self,
        *,
        verify: bool | str = True,
        http2: bool = False,
        max_connections: int = 100,
        max_keepalive_connections: int = 64,
        keepalive_expiry: float = 90.0,
    ) -> None:
        self.pool = _FastPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=http2,
        )
        self._urls: dict[str, tuple[httpx.URL, httpcore.URL, bytes]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's path (``client.send``) on the shared pool."""
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self.pool.handle_async_request(core)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, None),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.pool.aclose()

    def _target(
        self, client: httpx.AsyncClient, method: str, url: str
    ) -> tuple[httpx.URL, httpcore.URL, bytes]:
        cached = self._urls.get(url)
        if cached is None:
            merged = client.build_request(method, url).url  # the client's own base_url merge
            core_url = httpcore.URL(
                scheme=merged.raw_scheme,
                host=merged.raw_host,
                port=merged.port,
                target=merged.raw_path,
            )
            cached = (merged, core_url, merged.netloc)
            if len(self._urls) < _URL_CACHE_SIZE:
                self._urls[url] = cached
        return cached

    async def send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: Mapping[str, float | None],
    ) -> FastResponse:
        """Send one request and return once the response head arrived (body not read);
        raises httpx's transport errors as ``client.send`` would."""
        merged, core_url, host = self._target(client, method, url)
        given = {name.lower().encode("ascii"): value for name, value in headers.items()}
        raw: list[tuple[bytes, bytes]] = [(b"Host", host)]
        for name, value in client.headers.raw:
            if name.lower() not in given:
                raw.append((name, value))
        for key, text in headers.items():
            raw.append((key.encode("ascii"), text.encode("ascii")))  # as httpx encodes them
        if body is not None:
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
            content=body or b"",
            extensions={"timeout": dict(timeout)},
        )
        with _httpx_errors(make_request):
            response = await self.pool.handle_async_request(core_request)
        result = FastResponse(
            response.status, response.headers, _Body(response.stream, make_request), make_request
        )
        if any(name.lower() == b"set-cookie" for name, _ in response.headers):
            client.cookies.extract_cookies(
                httpx.Response(response.status, headers=response.headers, request=make_request())
            )
        return result


_CLIENTS: weakref.WeakKeyDictionary[httpx.AsyncClient, FastTransport] = weakref.WeakKeyDictionary()


def adopt(client: httpx.AsyncClient, transport: FastTransport) -> None:
    """Remember that ``client`` was built on ``transport`` (by ``open_http_client``)."""
    _CLIENTS[client] = transport


def transport_for(client: httpx.AsyncClient) -> FastTransport | None:
    """The client's fast transport, when the fast path may be taken for it now."""
    transport = _CLIENTS.get(client)
    if transport is None or client.auth is not None or client.cookies.jar:
        return None
    if any(client.event_hooks.values()):
        return None
    return transport


# -- the pool's bookkeeping --------------------------------------------------------------
# httpcore re-checks every pooled connection whenever a request comes or goes, and for
# each idle one that check is a poll() system call (did the server close it?): with a few
# dozen connections that is a few dozen system calls per request. This pool sweeps every
# connection that way at most every ``_SWEEP_INTERVAL`` seconds, and otherwise checks only
# the idle connection it is about to reuse, so no request is ever sent on a connection the
# server closed and expired ones still close on the next sweep. It overrides httpcore's
# private ``_assign_requests_to_connections`` (no public hook exists): hence
# :data:`TESTED_HTTPCORE`.

_SWEEP_INTERVAL = 1.0


class _FastPool(httpcore.AsyncConnectionPool):
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
