"""A base for mock provider servers: real loopback HTTP (hypercorn, trio) with fault injection.

Every mock provider (OpenAI, Anthropic, Gemini, …) is a subclass of :class:`MockProviderServer`
served by :func:`open_mock_server`::

    async with open_mock_server(MockOpenAIServer()) as server:
        server.url            # "http://127.0.0.1:<port>"
        server.inject_status(429, retry_after=2)   # the next request gets a 429
        ...
        server.requests[-1].json                     # what the client sent

Adding a provider
-----------------
1. Subclass :class:`MockProviderServer`. Register routes in ``__init__`` with
   ``self.add_route("POST", "/v1/messages", self.messages)`` (a path may end with ``*``
   to match a prefix, e.g. ``"/v1beta/models/*"``).
2. A handler is ``async def handler(request: RecordedRequest) -> Reply`` and returns
   :class:`JSONReply` (one JSON body) or :class:`StreamReply` (a list of already encoded
   SSE frames, e.g. ``sse_frame({"type": "message_start", ...}, event="message_start")``).
   Derive content deterministically from the request so tests can assert exact text.
3. Override :meth:`MockProviderServer.error_body` to shape error bodies like the provider
   (the base uses OpenAI's ``{"error": {"message", "type", "param", "code"}}``),
   :meth:`MockProviderServer.error_frame` for in-band stream errors,
   :meth:`MockProviderServer.presented_key` to read the provider's auth header, and
   :meth:`MockProviderServer.malformed_frame` / :meth:`MockProviderServer.status_for_fault`
   if the provider needs something different.
4. Expose ``mock_<provider>()``: ``return open_mock_server(MockXServer(**kw))``.

Faults are queued: each request to a provider route (``add_route(..., faulty=True)``, the
default) takes the next fault off the queue, in order; a request with no queued fault is
served normally. The server records every request (method, path, headers, JSON body) and
counts streams the client aborted (closed before the stream ended), so tests can prove
that cancellation reached the wire: ``await server.wait_for_aborted_streams(1)``;
``aborted_requests`` / ``wait_for_aborted_requests`` also count a request abandoned while
it still waited for its first byte (``slow_first_byte``).

Control routes
--------------
The same controls over HTTP, for a mock started from the shell
(``python -m atomr_infer mock openai --port 9100``); they need no API key and never take
a fault off the queue:

- ``POST /_mock/faults`` with ``{"fault": "status", "status": 429, "retry_after": 2}``,
  ``{"fault": "slow_first_byte", "seconds": 3}``, or ``{"fault": KIND, "chunks": N}`` for
  ``stall_after``, ``drop_after``, ``malformed_after``, ``error_event_after``; ``"count": N``
  queues the fault N times. Answers ``{"queued": <faults pending>}``; a bad fault gets 400.
- ``GET /_mock/requests``: ``{"count": N, "requests": [{"method", "path", "json"}, ...]}``
  (the last 50; headers are left out, they carry keys).
- ``POST /_mock/reset``: forget queued faults and recorded requests.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

__all__ = [
    "Fault",
    "JSONReply",
    "MockProviderServer",
    "RecordedRequest",
    "Reply",
    "StreamReply",
    "open_mock_server",
    "sse_frame",
]

S = TypeVar("S", bound="MockProviderServer")

#: the control routes' path prefix (see "Control routes" above)
CONTROL_PREFIX = "/_mock/"
_CHUNK_FAULTS = ("stall_after", "drop_after", "malformed_after", "error_event_after")


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request the mock server received. Header names are lower case."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = attrs.field(repr=False)

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``None`` when empty)."""
        return json.loads(self.body) if self.body else None


@attrs.frozen(kw_only=True)
class JSONReply:
    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class StreamReply:
    """A ``text/event-stream`` answer: ``frames`` are encoded SSE events, sent one by one."""

    frames: tuple[bytes, ...] = attrs.field(converter=tuple)
    status: int = 200
    headers: Mapping[str, str] = attrs.Factory(dict)
    #: pause between frames (seconds, on trio's clock)
    interval: float = 0.0


Reply = JSONReply | StreamReply
Handler = Callable[[RecordedRequest], Awaitable[Reply]]


def sse_frame(data: Any, *, event: str | None = None) -> bytes:
    """Encode one SSE event; ``data`` that is not a string is sent as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return (head + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n").encode()


@attrs.frozen(kw_only=True)
class Fault:
    """One queued fault. ``kind`` is one of ``status``, ``slow_first_byte``, ``stall``,
    ``drop``, ``malformed`` or ``error_event``."""

    kind: str
    status: int = 500
    retry_after: float | None = None
    body: Any = None
    headers: Mapping[str, str] = attrs.Factory(dict)
    seconds: float = 0.0
    n_chunks: int = 0


class _Drop(Exception):
    """Raised inside the ASGI app to close the connection without ending the body."""


@attrs.define
class _Route:
    method: str
    path: str
    handler: Handler
    faulty: bool

    def matches(self, method: str, path: str) -> bool:
        if method != self.method:
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


class MockProviderServer:
    """A provider's HTTP API on loopback, with queued faults and a record of requests.

    Subclasses add routes (see the module docstring). Not thread-safe: use it from the trio
    run that serves it.
    """

    #: used in error messages and the default error bodies
    provider = "mock"

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.streams_started = 0
        self.streams_completed = 0
        self.aborted_streams = 0
        #: requests whose client disconnected before the reply was complete (a stream or
        #: a reply still waiting for its first byte)
        self.aborted_requests = 0
        #: requests being answered now, and the most there ever were at once
        self.in_flight = 0
        self.peak_in_flight = 0
        self._in_flight_waiters: list[tuple[int, trio.Event]] = []
        self.required_key: str | None = None
        self._routes: list[_Route] = []
        self._faults: collections.deque[Fault] = collections.deque()
        self._abort_waiters: list[tuple[int, trio.Event]] = []
        self._request_abort_waiters: list[tuple[int, trio.Event]] = []
        self.add_route("POST", "/_mock/faults", self._control_faults, faulty=False)
        self.add_route("GET", "/_mock/requests", self._control_requests, faulty=False)
        self.add_route("POST", "/_mock/reset", self._control_reset, faulty=False)

    # -- routes -------------------------------------------------------------------------
    def add_route(self, method: str, path: str, handler: Handler, *, faulty: bool = True) -> None:
        """Serve ``method path`` with ``handler``; ``faulty`` routes consume queued faults."""
        self._routes.append(_Route(method.upper(), path, handler, faulty))

    # -- fault injection ----------------------------------------------------------------
    def inject_status(
        self,
        status: int,
        *,
        retry_after: float | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next request is answered with ``status`` (and ``Retry-After`` when given)."""
        self._faults.append(
            Fault(
                kind="status",
                status=status,
                retry_after=retry_after,
                body=body,
                headers=dict(headers or {}),
            )
        )

    def inject_5xx(self, n: int = 1, *, status: int = 503) -> None:
        """The next ``n`` requests are answered with ``status`` (503 by default)."""
        for _ in range(n):
            self.inject_status(status)

    def slow_first_byte(self, seconds: float) -> None:
        """The next request waits ``seconds`` before the response starts."""
        self._faults.append(Fault(kind="slow_first_byte", seconds=seconds))

    def stall_after(self, n_chunks: int) -> None:
        """The next stream sends ``n_chunks`` frames, then nothing, forever."""
        self._faults.append(Fault(kind="stall", n_chunks=n_chunks))

    def drop_after(self, n_chunks: int) -> None:
        """The next stream sends ``n_chunks`` frames, then the connection is closed."""
        self._faults.append(Fault(kind="drop", n_chunks=n_chunks))

    def malformed_after(self, n_chunks: int) -> None:
        """The next stream sends ``n_chunks`` frames, then one that is not valid JSON."""
        self._faults.append(Fault(kind="malformed", n_chunks=n_chunks))

    def error_event_after(
        self, n_chunks: int, *, type: str = "server_error", message: str = "injected error"
    ) -> None:
        """The next stream sends ``n_chunks`` frames, then an in-band error event, then ends."""
        self._faults.append(
            Fault(kind="error_event", n_chunks=n_chunks, body={"type": type, "message": message})
        )

    def require_api_key(self, key: str | None) -> None:
        """From now on, requests without this key get 401 (``None`` turns the check off)."""
        self.required_key = key

    @property
    def pending_faults(self) -> int:
        """How many queued faults no request has taken yet."""
        return len(self._faults)

    def clear_faults(self) -> int:
        """Forget the queued faults (requests already recorded stay); returns how many."""
        dropped = len(self._faults)
        self._faults.clear()
        return dropped

    # -- control routes -----------------------------------------------------------------
    async def _control_faults(self, request: RecordedRequest) -> Reply:
        try:
            spec = request.json
            if not isinstance(spec, dict):
                raise ValueError("the body must be a JSON object")
            count = _int(spec.get("count", 1), "count", minimum=1)
            queue = self._fault_from_spec(spec)
        except ValueError as exc:
            body = self.error_body(400, str(exc), type="invalid_request_error", code=None)
            return JSONReply(status=400, body=body)
        for _ in range(count):
            queue()
        return JSONReply(body={"queued": self.pending_faults})

    def _fault_from_spec(self, spec: Mapping[str, Any]) -> Callable[[], None]:
        """A callable that queues the fault ``spec`` describes; ``ValueError`` when it is bad."""
        kind = spec.get("fault")
        if kind == "status":
            status = _int(spec.get("status"), "status", minimum=100)
            retry_after = spec.get("retry_after")
            if retry_after is not None and not isinstance(retry_after, int | float):
                raise ValueError("'retry_after' must be a number of seconds")
            return lambda: self.inject_status(status, retry_after=retry_after)
        if kind == "slow_first_byte":
            seconds = spec.get("seconds")
            if not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError("'seconds' must be a number >= 0")
            return lambda: self.slow_first_byte(float(seconds))
        if kind in _CHUNK_FAULTS:
            chunks = _int(spec.get("chunks", 0), "chunks", minimum=0)
            method = getattr(self, str(kind))
            return lambda: method(chunks)
        kinds = ", ".join(["status", "slow_first_byte", *_CHUNK_FAULTS])
        raise ValueError(f"'fault' must be one of {kinds} (got {kind!r})")

    async def _control_requests(self, request: RecordedRequest) -> Reply:
        seen = [r for r in self.requests if not r.path.startswith(CONTROL_PREFIX)]
        recent = [
            {"method": r.method, "path": r.path, "json": _json_or_none(r)} for r in seen[-50:]
        ]
        return JSONReply(body={"count": len(seen), "requests": recent})

    async def _control_reset(self, request: RecordedRequest) -> Reply:
        self.clear_faults()
        self.requests.clear()
        return JSONReply(body={"queued": 0})

    # -- provider hooks -----------------------------------------------------------------
    def error_body(self, status: int, message: str, *, type: str, code: str | None) -> Any:
        """The JSON body of an error answer (OpenAI's shape by default)."""
        return {"error": {"message": message, "type": type, "param": None, "code": code}}

    def presented_key(self, headers: Mapping[str, str]) -> str | None:
        """The API key a request carries (``Authorization: Bearer`` or ``api-key``)."""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return headers.get("api-key") or headers.get("x-api-key")

    def malformed_frame(self) -> bytes:
        """A frame the provider's client cannot parse."""
        return b'data: {"choices": [{"delta": {"content": "oops"\n\n'

    def error_frame(self, type: str, message: str) -> bytes:
        """An in-band error event of the provider's stream (OpenAI: ``data: {"error": …}``)."""
        return sse_frame(self.error_body(500, message, type=type, code=None))

    def status_for_fault(self, fault: Fault) -> JSONReply:
        """The answer for an injected status fault."""
        error_type = {
            401: "authentication_error",
            403: "permission_error",
            404: "invalid_request_error",
            429: "rate_limit_error",
        }.get(fault.status, "server_error" if fault.status >= 500 else "invalid_request_error")
        body = fault.body
        if body is None:
            body = self.error_body(
                fault.status, f"injected {fault.status}", type=error_type, code=None
            )
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["retry-after"] = _format_seconds(fault.retry_after)
        return JSONReply(status=fault.status, body=body, headers=headers)

    # -- waiting ------------------------------------------------------------------------
    async def wait_for_aborted_streams(self, count: int = 1) -> None:
        """Return once at least ``count`` streams were aborted by their client."""
        if self.aborted_streams >= count:
            return
        event = trio.Event()
        self._abort_waiters.append((count, event))
        await event.wait()

    async def wait_for_aborted_requests(self, count: int = 1) -> None:
        """Return once at least ``count`` requests were abandoned by their client before
        the reply was complete (also while it waited for its first byte)."""
        if self.aborted_requests >= count:
            return
        event = trio.Event()
        self._request_abort_waiters.append((count, event))
        await event.wait()

    async def wait_for_in_flight(self, count: int) -> None:
        """Return once at least ``count`` requests are being answered at the same time."""
        if self.in_flight >= count:
            return
        event = trio.Event()
        self._in_flight_waiters.append((count, event))
        await event.wait()

    def _enter_flight(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        for count, event in list(self._in_flight_waiters):
            if self.in_flight >= count:
                event.set()
                self._in_flight_waiters.remove((count, event))

    def _note_request_aborted(self) -> None:
        self.aborted_requests += 1
        for count, event in list(self._request_abort_waiters):
            if self.aborted_requests >= count:
                event.set()
                self._request_abort_waiters.remove((count, event))

    def _note_aborted(self) -> None:
        self.aborted_streams += 1
        for count, event in list(self._abort_waiters):
            if self.aborted_streams >= count:
                event.set()
                self._abort_waiters.remove((count, event))

    # -- the ASGI application -----------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        request = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
        )
        self.requests.append(request)
        self._enter_flight()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    _watch_disconnect, receive, nursery.cancel_scope, self._note_request_aborted
                )
                try:
                    await self._respond(request, send)
                except _Drop:
                    pass
                nursery.cancel_scope.cancel()

        finally:
            self.in_flight -= 1

    async def _respond(self, request: RecordedRequest, send: Any) -> None:
        route = next((r for r in self._routes if r.matches(request.method, request.path)), None)
        if route is None:
            body = self.error_body(
                404, f"no route {request.method} {request.path}", type="not_found", code=None
            )
            await _send_json(send, JSONReply(status=404, body=body))
            return
        fault = self._faults.popleft() if route.faulty and self._faults else None
        control = route.path.startswith(CONTROL_PREFIX)
        if (
            not control
            and self.required_key is not None
            and self.presented_key(request.headers) != (self.required_key)
        ):
            body = self.error_body(
                401,
                "Incorrect API key provided.",
                type="authentication_error",
                code="invalid_api_key",
            )
            await _send_json(send, JSONReply(status=401, body=body))
            return
        if fault is not None and fault.kind == "status":
            await _send_json(send, self.status_for_fault(fault))
            return
        if fault is not None and fault.kind == "slow_first_byte":
            await trio.sleep(fault.seconds)
            fault = None
        reply = await route.handler(request)
        if isinstance(reply, JSONReply):
            await _send_json(send, reply)
        else:
            await self._stream(send, reply, fault)

    async def _stream(self, send: Any, reply: StreamReply, fault: Fault | None) -> None:
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
        headers.update(reply.headers)
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": _encode(headers)}
        )
        self.streams_started += 1
        frames = list(reply.frames)
        cut = len(frames) if fault is None else min(fault.n_chunks, len(frames))
        finished = False
        try:
            for i, frame in enumerate(frames[:cut]):
                if i and reply.interval:
                    await trio.sleep(reply.interval)
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            if fault is not None and fault.kind == "stall":
                await trio.sleep_forever()
            if fault is not None and fault.kind == "drop":
                finished = True
                raise _Drop
            if fault is not None and fault.kind == "error_event":
                frame = self.error_frame(fault.body["type"], fault.body["message"])
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            if fault is not None and fault.kind == "malformed":
                await send(
                    {
                        "type": "http.response.body",
                        "body": self.malformed_frame(),
                        "more_body": True,
                    }
                )
            # counted before the last send: the client may have read the end already
            finished = True
            self.streams_completed += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if not finished:
                self._note_aborted()


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Any) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _watch_disconnect(
    receive: Any, scope: trio.CancelScope, on_disconnect: Callable[[], None]
) -> None:
    # hypercorn's trio worker only tells a handler about a disconnect through receive()
    # (pgjones/hypercorn#210), so a sibling task listens and cancels the response.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            scope.cancel()
            return


async def _send_json(send: Any, reply: JSONReply) -> None:
    # a final newline, as the providers send, so that curl output ends its line
    payload = json.dumps(reply.body).encode() + b"\n"
    headers = {"content-type": "application/json", **reply.headers}
    await send({"type": "http.response.start", "status": reply.status, "headers": _encode(headers)})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _encode(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]


def _int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name!r} must be an integer >= {minimum} (got {value!r})")
    return value


def _json_or_none(request: RecordedRequest) -> Any:
    try:
        return request.json
    except ValueError:
        return None


def _format_seconds(value: float) -> str:
    return str(int(value)) if value == math.floor(value) else f"{value:g}"


@asynccontextmanager
async def open_mock_server(
    server: S, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[S]:
    """Serve ``server`` on ``host:port`` (default: loopback, a free port) until the block exits.

    The server runs in a nursery owned by this context manager; leaving the block
    cancels it and closes every connection. ``server.url`` is set before the block runs.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    # keep idle pooled connections open however far a MockClock jumps
    config.keep_alive_timeout = 24 * 3600.0
    config.graceful_timeout = 0.0
    async with trio.open_nursery() as nursery:
        binds: Iterable[str] = await nursery.start(_serve, serve, server, config)
        server.url = next(iter(binds))
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def _serve(serve: Any, app: Any, config: Any, *, task_status: Any) -> None:
    await serve(app, config, task_status=task_status, mode="asgi")
