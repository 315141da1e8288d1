"""The remote engine: a bounded priority queue feeding worker slots that call a provider.

A provider plugin implements :class:`Provider` (four methods: build the HTTP request,
parse a JSON body, make a per-request SSE parser, refine an error body) and hands it to a
:class:`RemoteEngine`; the engine does everything else. Its runner subclasses
:class:`~atomr_infer_remote.EngineRunner`, which builds the engine from the deployment and
the host's context and delegates ``run``, ``execute`` and ``rebuild_session`` to it.

Per attempt a worker slot does: rate-limit permit (every retry; the first attempt's
permit is admission's when a shared limiter is given) → ``breaker.check`` → request →
SSE or JSON decode → classify → breaker record → ``RetryEngine.decide``.

Rules:

- A request's deadline is ``batch.deadline``, else arrival + ``timeouts.request_timeout``;
  it bounds the queue wait, rate-limit waits, retries and the wait for the response head
  (``RequestTimeoutError`` with ``phase`` ``"queue"`` or ``"first_byte"``).
  ``timeouts.read_timeout`` bounds each gap between body reads (``phase="read"``).
- Retries happen only before the first chunk reached the caller, only for idempotent
  deployments, within ``retry.max_retries``; a 429 with Retry-After pauses the limiter.
- A 401 rebuilds the session (the credential provider is asked again) and retries once,
  before output, whatever the retry policy.
- Leaving the handle's block cancels the request: a queued one leaves the queue, a
  running one has its upstream response closed before ``__aexit__`` returns.
- Errors before output are raised from ``__aenter__``; after output, from iteration,
  with nothing repeated.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import httpx
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    RunHandle,
    Secret,
    SessionRebuildCause,
    TokenChunk,
    TokenUsage,
)
from atomr_infer_core.errors import (
    BadRequestError,
    CapacityExhaustedError,
    DrainingError,
    InferenceError,
    InternalError,
    MalformedStreamError,
    RateLimitedError,
    RequestTimeoutError,
    SessionPoisonedError,
    UnauthorizedError,
)

from ._breaker import CircuitBreaker
from ._classify import classify_http_status
from ._http import FastResponse, HttpClientOptions, map_http_errors, send_streaming
from ._limiter import RateLimiter
from ._queue import BoundedPriorityQueue
from ._retry import RetryEngine
from ._session import CredentialProvider, RemoteSession, open_remote_session
from ._sse import SSEDecoder, SSEEvent

__all__ = [
    "EngineStatistics",
    "Provider",
    "ProviderRequest",
    "RemoteEngine",
    "StreamParser",
]

_CHANNEL_SIZE = 32
#: what parsing an upstream body of the wrong shape raises (bad JSON, a missing key, a
#: null where an object was promised): the upstream's fault, so a MalformedStreamError
#: for the request rather than a crash of the replica
_UNTRUSTED_SHAPE = (ValueError, KeyError, IndexError, TypeError, AttributeError)
_CLOSE_GRACE = 1.0
#: what a provider's ``build_request`` raises for content it cannot map (a value of
#: the wrong shape or one JSON cannot carry): that request's fault, a 400 for it alone
_UNBUILDABLE = (ValueError, TypeError, KeyError, AttributeError, RecursionError)

log = logging.getLogger("atomr_infer.remote.engine")


# -- the provider protocol ------------------------------------------------------------
@attrs.frozen(kw_only=True)
class ProviderRequest:
    """One HTTP request a provider wants sent.

    ``url`` is absolute or a path relative to the engine's ``base_url``. ``headers``
    carry the credential (the only place a provider reveals its ``Secret``). ``stream``
    says whether an event stream is expected (the response's content type decides).
    """

    url: str
    method: str = "POST"
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    json: Any = attrs.field(default=None, repr=False)
    stream: bool = False


class StreamParser(Protocol):
    """Per-request state for one event stream (made by :meth:`Provider.stream_parser`).

    ``feed`` turns one SSE event into chunks (often none); it raises an
    ``InferenceError`` for an in-band error event (classified like a status code) and
    ``MalformedStreamError`` for garbage (``ValueError``, ``KeyError``, ``TypeError``,
    ``IndexError`` and ``AttributeError`` from parsing untrusted JSON become one too). ``finished`` becomes true
    on the provider's end marker (``[DONE]``, ``message_stop``); the engine then stops
    reading. ``end`` is called when the body ends without the marker: it returns final
    chunks, or raises when the provider requires the marker.
    """

    @property
    def finished(self) -> bool: ...

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]: ...

    def end(self) -> Sequence[TokenChunk]: ...


class Provider(Protocol):
    """What a remote provider plugin supplies to the engine.

    Attributes:
        name: the provider's name in errors, breaker keys and metrics (``"openai"``).

    Chunks carry ``request_id=batch.request_id``; ``usage`` in a chunk is cumulative.
    """

    name: str

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        """The HTTP request for ``batch`` (method, URL, headers with auth, JSON body)."""
        ...

    def parse_response(self, batch: ExecuteBatch, body: Any) -> Sequence[TokenChunk]:
        """Chunks from a complete JSON response body (a non-streaming answer)."""
        ...

    def stream_parser(self, batch: ExecuteBatch) -> StreamParser:
        """A fresh parser for one streamed answer."""
        ...

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        """A more specific error for a provider error body, or ``None`` for the generic
        status mapping. ``body`` is parsed JSON, or text when it is not JSON."""
        ...


# -- statistics -----------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class EngineStatistics:
    queued: int
    in_flight: int
    completed: int
    #: failed requests by ``InferenceError.kind``
    failed: Mapping[str, int]
    retries: int
    session_rebuilds: int
    #: the breaker's own statistics (state, counts, timestamps)
    breaker: Any


# -- the request as the engine sees it ------------------------------------------------
class _End:
    """Sent after the last chunk of a request that finished normally."""


_END = _End()


@attrs.frozen
class _Failure:
    error: InferenceError


@attrs.define(eq=False)
class _Request:
    batch: ExecuteBatch
    arrival: float
    deadline: float
    send: trio.MemorySendChannel[Any]
    state: str = "queued"  # queued → running → done
    scope: trio.CancelScope | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    output_started: bool = False
    usage: TokenUsage | None = None
    #: the session generation the last attempt used (to coalesce 401 rebuilds)
    generation: int | None = None


class _ChunkStream:
    """The async iterator a handle yields; raises the request's error after output."""

    def __init__(self, first: Any, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self._next: Any = first
        self._receive = receive

    def __aiter__(self) -> _ChunkStream:
        return self

    async def __anext__(self) -> TokenChunk:
        item = self._next
        if item is None:
            try:
                item = await self._receive.receive()
            except trio.EndOfChannel:
                item = _Failure(DrainingError("the runner stopped while the request was running"))
        self._next = None
        if isinstance(item, _End):
            self._next = item
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._next = _END
            raise item.error
        return item  # type: ignore[no-any-return]

    def next_nowait(self) -> TokenChunk | None:
        """The next chunk if one is already here, else ``None`` (never waits, never
        raises: the end and errors are left for ``__anext__``). Lets a consumer batch
        chunks that arrived together."""
        item = self._next
        if item is None:
            try:
                item = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return None
        elif isinstance(item, _End | _Failure):
            return None
        if isinstance(item, _End | _Failure):
            self._next = item
            return None
        self._next = None
        return item  # type: ignore[no-any-return]


# -- observing attempts (tracing) -----------------------------------------------------
class AttemptWatch(Protocol):
    """One upstream request being observed."""

    #: the trace context to send upstream for this request (``None``: the batch's own)
    traceparent: str | None

    def finish(self, error: BaseException | None) -> None:
        """The request ended: with ``error``, or ``None`` when it succeeded."""


class AttemptObserver(Protocol):
    """Told about every request the engine sends upstream, retries included.

    The runtime layer's tracing implements it (``services["observer"]``); the engine
    itself knows nothing about spans. Called from the engine's worker tasks.
    """

    def upstream_attempt(self, batch: ExecuteBatch, number: int) -> AttemptWatch: ...


# -- the engine -----------------------------------------------------------------------
class RemoteEngine:
    """Worker slots calling one provider for one deployment replica.

    ``run`` owns the session (HTTP client + credential) and the worker slots; it runs in
    the replica's nursery until cancelled. ``submit`` may be called once ``run`` has
    started. ``limiter`` and ``breaker`` are the cluster's shared ones (the deployment's
    ``services``); without them the engine makes its own from the deployment's config.
    """

    def __init__(
        self,
        provider: Provider,
        credentials: CredentialProvider,
        deployment: Deployment,
        *,
        base_url: str = "",
        http_options: HttpClientOptions | None = None,
        limiter: Any = None,
        breaker: Any = None,
        state: Any = None,
        rng: random.Random | None = None,
        observer: AttemptObserver | None = None,
    ) -> None:
        self.provider = provider
        self._observer = observer
        self.deployment = deployment
        self._credentials = credentials
        self._base_url = base_url
        self._http_options = http_options or HttpClientOptions(timeouts=deployment.timeouts)
        self._admission_limiter = limiter is not None
        self._limiter, self._breaker = _limiter_and_breaker(
            provider.name, deployment, limiter, breaker, state
        )
        self._retry = RetryEngine(deployment.retry, idempotent=deployment.idempotent, rng=rng)
        self._queue: BoundedPriorityQueue[_Request] = BoundedPriorityQueue(
            deployment.serving.max_queued
        )
        self._session: RemoteSession | None = None
        self._requests: set[_Request] = set()
        #: running requests whose worker was stopped before answering
        self._stranded: list[_Request] = []
        self._queued = 0
        self._in_flight = 0
        self._completed = 0
        self._failed: dict[str, int] = {}
        self._retries = 0

    @property
    def breaker(self) -> Any:
        return self._breaker

    @property
    def limiter(self) -> Any:
        return self._limiter

    @property
    def session(self) -> RemoteSession:
        if self._session is None:
            raise DrainingError(f"{self.deployment.name}: the runner has not started")
        return self._session

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            queued=self._queued,
            in_flight=self._in_flight,
            completed=self._completed,
            failed=dict(self._failed),
            retries=self._retries,
            session_rebuilds=self._session.rebuilds if self._session else 0,
            breaker=self._breaker.statistics(),
        )

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the session and run ``serving.max_concurrent`` worker slots until cancelled.

        Raises ``UnauthorizedError`` when the credential cannot be had at start. On exit,
        queued requests fail with ``DrainingError``.
        """
        async with open_remote_session(
            self._credentials, self._http_options, base_url=self._base_url
        ) as session:
            self._session = session
            stopped: InferenceError | None = None
            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(self.deployment.serving.max_concurrent):
                        nursery.start_soon(self._worker)
                    task_status.started()
            except BaseException as exc:
                cause = _crash_cause(exc)
                if cause is not None:
                    stopped = SessionPoisonedError(
                        f"{self.deployment.name}: the runner crashed ({type(cause).__name__}: "
                        f"{cause}); it restarts with backoff"
                    )
                raise
            finally:
                self._session = None
                self._fail_stranded(stopped)

    def _fail_stranded(self, error: InferenceError | None) -> None:
        """Fail what the stopped workers left: the cause when the runner crashed, else
        the caller sees the end of its channel (``DrainingError``)."""
        stranded, self._stranded = self._stranded, []
        queued = [r for r in self._requests if r.state == "queued"]
        for request in [*stranded, *queued]:
            if error is not None:
                self._count_failure(error.kind)
                try:
                    request.send.send_nowait(_Failure(error))
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
            request.send.close()

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        """Rebuild the credential (and the HTTP client unless ``cause`` is an auth failure).

        Between runs (a replica restarting after a crash) there is no session to rebuild:
        the next :meth:`run` opens a fresh one, so this is a no-op then.
        """
        if self._session is None:
            return
        await self._session.rebuild(cause)

    # -- the caller's side --------------------------------------------------------------
    def submit(self, batch: ExecuteBatch) -> RunHandle:
        """Queue ``batch``; the handle's ``__aenter__`` waits for its first output."""
        return self._handle(batch)

    @asynccontextmanager
    async def _handle(self, batch: ExecuteBatch) -> AsyncIterator[_ChunkStream]:
        if self._session is None:
            raise DrainingError(f"{self.deployment.name}: the runner is not running")
        now = trio.current_time()
        deadline = batch.deadline
        if deadline is None:
            deadline = now + self.deployment.timeouts.request_timeout
        # (not open_memory_channel[Any]: subscripting it costs a typing-cache lookup per call)
        channel: tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]
        channel = trio.open_memory_channel(_CHANNEL_SIZE)
        send, receive = channel
        request = _Request(batch=batch, arrival=now, deadline=deadline, send=send)
        try:
            self._queue.put_nowait(request, batch.priority)
        except CapacityExhaustedError:
            self._count_failure("capacity_exhausted")
            raise
        self._queued += 1
        self._requests.add(request)
        try:
            first = await self._first_item(request, receive)
            if isinstance(first, _Failure):
                raise first.error
            yield _ChunkStream(first, receive)
        finally:
            with trio.CancelScope(shield=True):
                await self._abandon(request)
            receive.close()

    async def _first_item(self, request: _Request, receive: trio.MemoryReceiveChannel[Any]) -> Any:
        # The worker enforces the deadline once it runs the request; here only the wait
        # in the queue needs a bound.
        with trio.move_on_at(request.deadline):
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                return _Failure(DrainingError(f"{self.deployment.name}: the runner stopped"))
        if request.state == "queued":
            self._count_failure("timeout")
            return _Failure(
                RequestTimeoutError(
                    f"{self.deployment.name}: waited {trio.current_time() - request.arrival:.3g}s "
                    "in the queue without a free worker slot; raise serving.max_concurrent or "
                    "timeouts.request_timeout",
                    phase="queue",
                    elapsed_s=trio.current_time() - request.arrival,
                )
            )
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            return _Failure(DrainingError(f"{self.deployment.name}: the runner stopped"))

    async def _abandon(self, request: _Request) -> None:
        self._requests.discard(request)
        if request.state == "queued":
            self._queue.remove(request)
            self._queued -= 1
            request.state = "done"
            request.send.close()
            return
        if request.state == "running" and request.scope is not None:
            request.scope.cancel()
        await request.done.wait()

    # -- the worker's side --------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            request: _Request = await self._queue.get()
            if request.state != "queued":
                # its caller left while the queue handed it over (``get`` checkpoints
                # after taking it): already failed, closed and uncounted by ``_abandon``
                continue
            self._queued -= 1
            request.state = "running"
            self._in_flight += 1
            answered = False
            try:
                with trio.CancelScope() as scope:
                    request.scope = scope
                    await self._serve(request)
                answered = True
            finally:
                self._in_flight -= 1
                request.state = "done"
                if answered:
                    request.send.close()
                else:  # the engine is stopping: run() fails it with the reason
                    self._stranded.append(request)
                request.done.set()

    async def _serve(self, request: _Request) -> None:
        try:
            await self._attempts(request)
        except InferenceError as error:
            await self._fail(request, error)
            return
        except Exception as exc:
            # a bug met while serving this one request: it fails alone (500, traceback
            # in the log); the worker slot and every other request carry on
            log.exception(
                "%s: request %s failed with an unexpected error",
                self.deployment.name,
                request.batch.request_id,
            )
            await self._fail(
                request,
                InternalError(
                    f"internal error while serving request {request.batch.request_id} on "
                    f"{self.deployment.name!r}: {type(exc).__name__}; see the gateway log"
                ),
            )
            return
        self._completed += 1
        # without a checkpoint when there is room: the worker is done (``request.done``
        # set) before the caller wakes, so the caller's exit does not wait for it
        await _put(request, _END)

    async def _fail(self, request: _Request, error: InferenceError) -> None:
        error.deployment = error.deployment or self.deployment.name
        self._count_failure(error.kind)
        await _put(request, _Failure(error))

    def _count_failure(self, kind: str) -> None:
        self._failed[kind] = self._failed.get(kind, 0) + 1

    async def _attempts(self, request: _Request) -> None:
        attempt = 0  # attempts counted by the retry policy
        tries = 0  # every request sent upstream, re-authentication included
        reauthenticated = False
        while True:
            if trio.current_time() >= request.deadline:
                raise self._first_byte_timeout(request)
            take_permit = tries > 0 or not self._admission_limiter
            tries += 1
            try:
                await self._observed_attempt(request, tries, take_permit=take_permit)
                return
            except UnauthorizedError:
                if reauthenticated or request.output_started:
                    raise
                reauthenticated = True
                await self.session.rebuild(
                    SessionRebuildCause.REMOTE_AUTH_FAILURE,
                    seen_generation=request.generation,
                )
                self._retries += 1
                continue
            except InferenceError as error:
                now = trio.current_time()
                decision = self._retry.decide(
                    attempt,
                    error,
                    now=now,
                    deadline=request.deadline,
                    output_started=request.output_started,
                )
                if not decision.retry:
                    raise decision.error from None
            self._retries += 1
            attempt += 1
            await trio.sleep(decision.delay)

    async def _observed_attempt(self, request: _Request, number: int, *, take_permit: bool) -> None:
        """One upstream request, reported to the observer (tracing) when there is one."""
        if self._observer is None:
            await self._attempt(request, take_permit=take_permit)
            return
        watch = self._observer.upstream_attempt(request.batch, number)
        try:
            await self._attempt(request, take_permit=take_permit, traceparent=watch.traceparent)
        except BaseException as exc:
            watch.finish(exc)
            raise
        watch.finish(None)

    async def _attempt(
        self, request: _Request, *, take_permit: bool, traceparent: str | None = None
    ) -> None:
        permit = None
        if take_permit:
            permit = await self._limiter.acquire(
                requests=1,
                tokens=request.batch.estimated_total_tokens(),
                deadline=request.deadline,
            )
        request.usage = None
        try:
            breaker_permit = self._breaker.check()
            try:
                async with self.session.borrow() as snapshot:
                    request.generation = snapshot.generation
                    await self._exchange(request, snapshot.client, snapshot.credential, traceparent)
            except InferenceError as error:
                self._breaker.record_failure(breaker_permit, error)
                raise
            except BaseException:
                self._breaker.release(breaker_permit)
                raise
            self._breaker.record_success(breaker_permit)
        finally:
            if permit is not None:
                used = request.usage.total_tokens if request.usage is not None else None
                permit.release(actual_tokens=used)

    def _first_byte_timeout(self, request: _Request) -> RequestTimeoutError:
        elapsed = trio.current_time() - request.arrival
        return RequestTimeoutError(
            f"{self.provider.name}: no response within {elapsed:.3g}s of the request's "
            "arrival; the upstream is slow (raise timeouts.request_timeout if expected)",
            phase="first_byte",
            elapsed_s=elapsed,
        )

    async def _exchange(
        self,
        request: _Request,
        client: httpx.AsyncClient,
        credential: Secret | None,
        traceparent: str | None = None,
    ) -> None:
        wire = self._build_request(request.batch, credential)
        headers = wire.headers
        traceparent = traceparent or request.batch.traceparent
        if traceparent is not None:
            headers = {**headers, "traceparent": traceparent}
        with map_http_errors(provider=self.provider.name):
            with trio.move_on_at(request.deadline) as head_scope:
                # first byte and read gaps are bounded by the cancel scopes here
                response = await send_streaming(
                    client,
                    wire.method,
                    wire.url,
                    headers=headers,
                    json=wire.json,
                    connect_timeout=self.deployment.timeouts.connect_timeout,
                )
            if head_scope.cancelled_caught:
                raise self._first_byte_timeout(request)
            try:
                await self._consume(request, response)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE):
                    await response.aclose()

    def _build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        try:
            return self.provider.build_request(batch, credential)
        except InferenceError:
            raise
        except _UNBUILDABLE as exc:
            raise BadRequestError(
                f"{self.provider.name}: the request cannot be sent to this provider "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from exc

    async def _consume(self, request: _Request, response: httpx.Response | FastResponse) -> None:
        reads = response.aiter_bytes()
        if response.status_code >= 400:
            body = await self._read_all(reads)
            error = classify_http_status(
                self.provider.name,
                response.status_code,
                response.headers,
                body,
                refine=self.provider.refine_error,
            )
            if isinstance(error, RateLimitedError) and error.retry_after is not None:
                # the upstream's 429 pauses every request of this key, not just this one
                self._limiter.pause_until(trio.current_time() + error.retry_after)
            raise error
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            await self._relay_stream(request, reads)
            return
        body = await self._read_all(reads)
        try:
            parsed = json.loads(body)
            chunks = self.provider.parse_response(request.batch, parsed)
        except _UNTRUSTED_SHAPE as exc:
            raise MalformedStreamError(
                f"{self.provider.name}: the response body is not the JSON expected ({exc})"
            ) from exc
        passes_through = getattr(self.provider, "passes_through", None)
        if chunks and passes_through is not None and passes_through(request.batch):
            # the client speaks the upstream's dialect: it gets the upstream's own bytes
            chunks = [attrs.evolve(chunks[0], raw=body), *chunks[1:]]
        for chunk in chunks:
            await self._emit(request, chunk)

    async def _relay_stream(self, request: _Request, reads: AsyncIterator[bytes]) -> None:
        decoder = SSEDecoder()
        parser = self.provider.stream_parser(request.batch)
        while (data := await self._read(reads)) is not None:
            for event in decoder.receive_data(data):
                for chunk in self._feed(parser, event):
                    await self._emit(request, chunk)
                if parser.finished:
                    await _drain_buffered(reads)
                    return
        for event in decoder.close():
            for chunk in self._feed(parser, event):
                await self._emit(request, chunk)
        if not parser.finished:
            for chunk in parser.end():
                await self._emit(request, chunk)

    def _feed(self, parser: StreamParser, event: SSEEvent) -> Sequence[TokenChunk]:
        try:
            return parser.feed(event)
        except _UNTRUSTED_SHAPE as exc:
            raise MalformedStreamError(
                f"{self.provider.name}: an event of the stream could not be parsed ({exc})"
            ) from exc

    async def _read(self, reads: AsyncIterator[bytes]) -> bytes | None:
        """The next body read (``None`` at the end), bounded by ``read_timeout``."""
        gap = self.deployment.timeouts.read_timeout
        with trio.move_on_after(gap):
            try:
                return await reads.__anext__()
            except StopAsyncIteration:
                return None
        raise RequestTimeoutError(
            f"{self.provider.name}: no data for {gap:g}s in the middle of the response "
            "(timeouts.read_timeout)",
            phase="read",
            elapsed_s=gap,
        )

    async def _read_all(self, reads: AsyncIterator[bytes]) -> bytes:
        parts = []
        while (data := await self._read(reads)) is not None:
            parts.append(data)
        return b"".join(parts)

    async def _emit(self, request: _Request, chunk: TokenChunk) -> None:
        if chunk.usage is not None:
            request.usage = chunk.usage
        request.output_started = True
        # Chunks decoded from one read go out together: no checkpoint per chunk (the next
        # read is one), so the consumer wakes once per read rather than once per chunk.
        await _put(request, chunk)


def _crash_cause(exc: BaseException) -> BaseException | None:
    """The first exception in ``exc`` (a group, maybe nested) that is not a cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            cause = _crash_cause(inner)
            if cause is not None:
                return cause
        return None
    return None if isinstance(exc, trio.Cancelled) else exc


async def _put(request: _Request, item: Any) -> None:
    """Hand ``item`` to the caller; waits (a checkpoint) only when its channel is full.

    A caller that is gone (its channel closed) is nobody to tell: the item is dropped,
    never raised into the worker (which would take the replica down with it).
    """
    try:
        try:
            request.send.send_nowait(item)
        except trio.WouldBlock:
            await request.send.send(item)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass


async def _drain_buffered(reads: AsyncIterator[bytes]) -> None:
    """Read what is left of a finished body only as far as it is already buffered.

    After the provider's end marker the body's own end (HTTP/1.1's last chunk) has
    usually arrived with it; consuming it lets the connection go back to the pool
    instead of being closed. Nothing here waits: the first read that would need the
    network is cancelled at once (the connection is then closed, as before).
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            async for _ in reads:
                pass
        except httpx.TransportError:
            pass  # the answer is complete; a broken tail only costs the connection


def _limiter_and_breaker(
    provider: str, deployment: Deployment, limiter: Any, breaker: Any, state: Any
) -> tuple[Any, Any]:
    """The given limiter and breaker, else ones from the state backend, else in-memory ones."""
    key = f"deployment:{deployment.name}"
    if limiter is None:
        if state is not None:
            limiter = state.limiter(key, deployment.rate_limits)
        else:
            limiter = RateLimiter(deployment.rate_limits, name=key)
    if breaker is None:
        if state is not None:
            breaker = state.breaker(key, deployment.circuit_breaker, provider=provider)
        else:
            breaker = CircuitBreaker(deployment.circuit_breaker, name=key, provider=provider)
    return limiter, breaker
