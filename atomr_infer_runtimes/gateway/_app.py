"""The gateway's ASGI application: a raw fast path for the POST endpoints, Quart for the rest.

The three POST endpoints (chat, completions, embeddings) are served straight on ASGI:
they carry all the load, need to watch the receive channel for ``http.disconnect``
while nothing is being sent, and must never be cut by Quart's response timeout. The
GET endpoints (models, health, metrics, status) and lifespan go to a QuartTrio app.
Every request runs in the handler's own task; leaving it (finished, failed, client gone)
leaves the cluster's RunHandle, which cancels the runner's work.
"""

from __future__ import annotations

import enum
import inspect
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from atomr_infer_core import RequestKind, TokenChunk, Tokens, TokensBuilder, TokenUsage
from atomr_infer_core.errors import (
    BadRequestError,
    InferenceError,
    InternalError,
    NotFoundError,
    ShuttingDownError,
)

from ._auth import KeyChecker
from ._cors import CORSMiddleware
from ._disconnect import ClientDisconnected, ResponseState, cancel_on_disconnect, read_body
from ._doors import Door, pipeline_targets, target_runtime
from ._errors import error_body, error_headers, error_response, error_sse_event
from ._features import check_features
from ._headers import deployment_headers, processing_ms_header
from ._messages import CountTokensDoor, MessagesDoor
from ._openai import (
    ChatStreamEncoder,
    CompletionStreamEncoder,
    ParsedRequest,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json_body,
    render_chat,
    render_completion,
    render_embeddings,
)
from ._prompts import complete_prompts, shift_chunk
from ._responses import ResponsesDoor

__all__ = ["create_app", "to_plain"]

logger = logging.getLogger("atomr_infer.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
#: W3C trace context, version 00 (other versions: ignored, a new trace starts)
_TRACEPARENT = re.compile(rb"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_PARSERS = {
    "/v1/chat/completions": parse_chat,
    "/v1/completions": parse_completion,
    "/v1/embeddings": parse_embedding,
}


def _request_id(raw: bytes | None) -> str:
    if raw and len(raw) <= 200:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if text.isprintable() and text.strip():
            return text.strip()
    return f"req-{uuid.uuid4().hex}"


def to_plain(value: Any) -> Any:
    """JSON-able form of status values (attrs classes, enums, secrets-free by contract)."""
    if attrs.has(type(value)):
        return {f.name: to_plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "__dict__"):
        return {k: to_plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class _Served:
    """What the access log and the headers learn while a request is served."""

    __slots__ = ("deployment", "started", "tenant", "usage")

    def __init__(self, started: float) -> None:
        self.started = started
        self.deployment: str | None = None
        self.tenant: str | None = None
        self.usage: Any = None


class _Gateway:
    """ASGI entry: dispatches POST fast paths, hands everything else to Quart."""

    def __init__(self, cluster: Any, quart_app: QuartTrio) -> None:
        self.cluster = cluster
        self.quart = quart_app
        settings = cluster.config.cluster
        self.keys = KeyChecker(settings.api_keys, getattr(cluster.config, "keys", ()))
        self.max_body = settings.max_request_bytes
        #: one cancel scope per running request; shutdown sets their deadline
        self._cuts: set[trio.CancelScope] = set()
        self._cut_at: float | None = None
        #: the dialects beside Chat Completions (DESIGN.md "Front doors")
        self.doors: dict[str, Door] = {
            "/v1/messages": MessagesDoor(cluster),
            "/v1/messages/count_tokens": CountTokensDoor(cluster),
            "/v1/responses": ResponsesDoor(cluster),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            parser = _PARSERS.get(scope["path"])
            if parser is not None:
                if scope["method"] == "POST":
                    await self._post(scope, receive, send, parser)
                else:
                    await _method_not_allowed(scope, send)
                return
            door = self.doors.get(scope["path"])
            if door is not None:
                await self._post(scope, receive, send, None, door)
                return
        await self.quart(scope, receive, send)

    # ------------------------------------------------------------ shutdown

    def begin_shutdown(self, grace: float) -> None:
        """The gateway stops: every request still running (or arriving on a
        kept-alive connection) is cut ``grace`` seconds from now. A cut stream ends
        with an SSE error event (code ``shutting_down``) and a proper end of body; a cut
        request that sent nothing yet gets 503 ``shutting_down``."""
        self._cut_at = trio.current_time() + max(0.0, grace)
        for cut in self._cuts:
            cut.deadline = min(cut.deadline, self._cut_at)

    @contextmanager
    def _cut_scope(self) -> Iterator[trio.CancelScope]:
        cut = trio.CancelScope(deadline=math.inf if self._cut_at is None else self._cut_at)
        self._cuts.add(cut)
        try:
            with cut:
                yield cut
        finally:
            self._cuts.discard(cut)

    # ------------------------------------------------------------ POST fast path

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, parser: Any, door: Door | None = None
    ) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = _request_id(headers.get(b"x-request-id"))
        extra = [(b"x-request-id", request_id.encode())]
        status = 200
        state = ResponseState()
        served = _Served(started)
        reached_cluster = False

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state.started = True
            elif not message.get("more_body", False):
                state.finished = True
            await send(message)

        try:
            tenant = self.keys.check(
                door.authorization(headers) if door else headers.get(b"authorization")
            )
            length = headers.get(b"content-length")
            body = await read_body(
                receive,
                limit=self.max_body,
                content_length=int(length) if length and length.isdigit() else None,
            )
            parsed: ParsedRequest
            if door is not None:
                data = parse_json_body(body)
                await door.prefetch(data)
                parsed = door.parse(data, request_id, headers)
            else:
                parsed = parser(parse_json_body(body), request_id)
            served.tenant = tenant
            if tenant is not None:
                _assign_tenant(self.cluster, parsed, tenant)
            if door is None:
                check_features(parsed.batch, target_runtime(self.cluster, parsed.model))
            fields = {} if door is None else door.feature_fields
            if fields is not None:
                # a pipeline: every deployment that may answer must honour the request
                for runtime, exempt in pipeline_targets(self.cluster, parsed.model):
                    check_features(parsed.batch, runtime, names=fields, exempt=exempt)
            reached_cluster = True  # from here on the cluster counts the request
            served.tenant = parsed.batch.tenant
            traceparent = headers.get(b"traceparent")
            if traceparent is not None and _TRACEPARENT.match(traceparent):
                # continue the caller's trace (and pass it upstream even with tracing off)
                parsed.batch = attrs.evolve(parsed.batch, traceparent=traceparent.decode())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope, state)
                status = await self._dispatch(parsed, tracked_send, extra, state, served, door)
                nursery.cancel_scope.cancel()
        except InferenceError as exc:
            if not reached_cluster:
                self._count_rejected(exc.kind)
            status = await _send_error(send, exc, extra, door)
        except ClientDisconnected:
            state.gone = True
            self._count_rejected(None)
        finally:
            if state.gone:
                status = 499
            self._log_access(scope, status, request_id, started, served)

    def _count_rejected(self, kind: str | None) -> None:
        """Count a request the front door ended (bad body, bad key, client gone while
        sending it): the cluster never saw it, and every request is counted once."""
        requests = getattr(getattr(self.cluster, "metrics", None), "requests", None)
        if requests is not None:
            requests.labels("?", "error" if kind else "cancelled", kind or "").inc()

    async def _dispatch(
        self,
        parsed: ParsedRequest,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        state: ResponseState,
        served: _Served,
        door: Door | None = None,
    ) -> int:
        batch = parsed.batch
        try:
            if door is not None and (answer := door.local_answer(parsed)) is not None:
                await _send_full(send, 200, [_JSON, *extra], answer)
                return 200
            if batch.stream and batch.kind is not RequestKind.EMBEDDING:
                return await self._stream(parsed, send, extra, served, door)
            return await self._unary(parsed, send, extra, served, door)
        except Exception as exc:
            # a bug below us: answer 500 (or end the stream) and log the traceback
            if isinstance(exc, InferenceError):
                raise
            logger.exception("request %s failed with an unexpected error", batch.request_id)
            error = InternalError(
                f"internal error while serving request {batch.request_id}: {type(exc).__name__}; see the gateway log"
            )
            if state.finished:
                return 500
            if state.started:
                await send(
                    {
                        "type": "http.response.body",
                        "body": door.error_event(error) if door else error_sse_event(error),
                        "more_body": False,
                    }
                )
                return 200
            return await _send_error(send, error, extra, door)

    def _answer_headers(
        self, deployment: str | None, served: _Served, extra: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """``extra`` plus who answered, its rate-limit state and the processing time."""
        served.deployment = deployment
        return [
            *extra,
            *deployment_headers(self.cluster, deployment),
            processing_ms_header(served.started, time.perf_counter()),
        ]

    def _log_access(
        self, scope: Scope, status: int, request_id: str, started: float, served: _Served
    ) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        usage = served.usage
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "latency_ms": latency_ms,
            "deployment": served.deployment,
            "tenant": served.tenant,
            "tokens_in": usage.input_tokens if usage is not None else None,
            "tokens_out": usage.output_tokens if usage is not None else None,
        }
        logger.info(
            "%s %s %d request_id=%s %.1fms",
            scope["method"],
            scope["path"],
            status,
            request_id,
            latency_ms,
            extra=fields,
        )

    async def _unary(
        self,
        parsed: ParsedRequest,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        served: _Served,
        door: Door | None = None,
    ) -> int:
        batch = parsed.batch
        raw: list[bytes] = []
        with self._cut_scope() as cut:
            try:
                tokens = await self._tokens(parsed, raw)
            except InferenceError as exc:
                headers = self._answer_headers(exc.deployment, served, extra)
                return await _send_error(send, exc, headers, door)
        if cut.cancelled_caught:
            return await _send_error(send, _shutting_down(), extra, door)
        served.usage = tokens.usage
        deployment = tokens.deployment
        created = int(time.time())
        if door is not None:
            body = door.render(parsed, tokens, b"".join(raw) if raw else None)
        elif batch.kind is RequestKind.CHAT:
            body = render_chat(
                tokens,
                response_id=f"chatcmpl-{batch.request_id}",
                created=created,
                model=parsed.model,
                n=batch.sampling.n,
            )
        elif batch.kind is RequestKind.COMPLETION:
            body = render_completion(
                tokens,
                response_id=f"cmpl-{batch.request_id}",
                created=created,
                model=parsed.model,
                n=batch.sampling.n * max(1, len(parsed.prompts)),
            )
        else:
            body = render_embeddings(
                tokens,
                model=parsed.model,
                inputs=batch.inputs or (),
                encoding_format=parsed.encoding_format,
            )
        await _send_full(send, 200, [_JSON, *self._answer_headers(deployment, served, extra)], body)
        return 200

    async def _tokens(self, parsed: ParsedRequest, raw: list[bytes]) -> Tokens:
        """The whole answer; a passthrough's upstream bytes are appended to ``raw``."""
        if parsed.prompts:
            return await complete_prompts(self.cluster, parsed.prompts)
        builder = TokensBuilder(request_id=parsed.batch.request_id)
        async with self.cluster.execute(parsed.batch) as chunks:
            async for chunk in chunks:
                builder.add(chunk)
                if chunk.raw is not None:
                    raw.append(chunk.raw)
            deployment = getattr(chunks, "deployment", None)
        return builder.build(deployment=deployment)

    async def _stream(
        self,
        parsed: ParsedRequest,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        served: _Served,
        door: Door | None = None,
    ) -> int:
        batch = parsed.batch
        chat = batch.kind is RequestKind.CHAT
        encoder: Any
        if door is not None:
            encoder = door.stream_encoder(parsed)
        else:
            encoder_class = ChatStreamEncoder if chat else CompletionStreamEncoder
            encoder = encoder_class(
                response_id=f"{'chatcmpl' if chat else 'cmpl'}-{batch.request_id}",
                created=int(time.time()),
                model=parsed.model,
                include_usage=parsed.include_usage,
            )
        began = False
        deployment: str | None = None
        total = TokenUsage()
        error: InferenceError | None = None
        with self._cut_scope() as cut:
            try:
                for prompt, one in enumerate(parsed.prompts or (batch,)):
                    if parsed.prompts:
                        encoder.usage = None  # this prompt's usage; summed into total below
                    async with self.cluster.execute(one) as chunks:
                        deployment = getattr(chunks, "deployment", None)
                        # chunks that arrived together go out in one write; nothing waits for more
                        take = getattr(chunks, "next_nowait", None)
                        async for chunk in chunks:
                            data = encoder.encode(self._shift(parsed, chunk, prompt))
                            if take is not None:
                                while (more := take()) is not None:
                                    data += encoder.encode(self._shift(parsed, more, prompt))
                            if not began:
                                began = True
                                headers = self._answer_headers(deployment, served, extra)
                                await send(
                                    {
                                        "type": "http.response.start",
                                        "status": 200,
                                        "headers": [*_SSE_HEADERS, *headers],
                                    }
                                )
                            if data:
                                await send(
                                    {"type": "http.response.body", "body": data, "more_body": True}
                                )
                    if parsed.prompts:
                        total = total + (encoder.usage or TokenUsage())
                if parsed.prompts:
                    encoder.usage = total
            except InferenceError as exc:
                error = exc
        if cut.cancelled_caught:
            error = _shutting_down()
        if error is not None:
            if not began:
                headers = self._answer_headers(error.deployment, served, extra)
                return await _send_error(send, error, headers, door)
            logger.warning(
                "request %s failed after streaming began: %s", batch.request_id, error.message
            )
            event = door.error_event(error) if door else error_sse_event(error)
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return 200
        if not began:
            headers = self._answer_headers(deployment, served, extra)
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *headers]}
            )
        served.usage = getattr(encoder, "usage", None)
        await send({"type": "http.response.body", "body": encoder.finish(), "more_body": False})
        return 200

    @staticmethod
    def _shift(parsed: ParsedRequest, chunk: TokenChunk, prompt: int) -> TokenChunk:
        if not parsed.prompts:
            return chunk
        shifted = shift_chunk(chunk, prompt, parsed.batch.sampling.n)
        # the encoder keeps the last usage it saw: hand it this prompt's, summed after
        return attrs.evolve(shifted, usage=chunk.usage)


def _assign_tenant(cluster: Any, parsed: ParsedRequest, tenant: str) -> None:
    """Label the request (and each prompt's batch) with ``tenant``; a model the tenant
    may not use is refused here (403), before anything runs."""
    tenants = getattr(cluster, "tenants", None)
    if tenants is not None:
        tenants.check_model(tenant, parsed.model)
    parsed.batch = attrs.evolve(parsed.batch, tenant=tenant)
    if parsed.prompts:
        parsed.prompts = tuple(attrs.evolve(p, tenant=tenant) for p in parsed.prompts)


def _visible(cluster: Any, names: list[str]) -> set[str]:
    """The deployments the request's key may use (``g.tenant`` from the auth hook)."""
    tenants = getattr(cluster, "tenants", None)
    tenant = getattr(g, "tenant", None)
    if tenants is None or tenant is None:
        return set(names)
    return set(tenants.visible(tenant, names))


def _shutting_down() -> ShuttingDownError:
    return ShuttingDownError(
        "the gateway is shutting down and its shutdown_grace ran out for this request; "
        "send it again (another gateway instance, or this one once it is back)"
    )


async def _method_not_allowed(scope: Scope, send: Send) -> None:
    body = json.dumps(
        {
            "error": {
                "message": f"method {scope['method']} is not allowed on {scope['path']}; use POST",
                "type": "invalid_request_error",
                "param": None,
                "code": "method_not_allowed",
            }
        }
    ).encode()
    headers = [_JSON, (b"allow", b"POST"), (b"x-should-retry", b"false")]
    await _send_full(send, 405, headers, body)


async def _send_full(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(
    send: Send, exc: InferenceError, extra: list[tuple[bytes, bytes]], door: Door | None = None
) -> int:
    """Send ``exc`` in the door's dialect (OpenAI's without one); return the status."""
    status, headers, body = door.error_response(exc) if door else error_response(exc)
    await _send_full(send, status, [_JSON, *headers, *extra], body)
    return status


# ---------------------------------------------------------------- Quart: GET endpoints


def _json_response(
    payload: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    response = Response(json.dumps(payload), status=status, content_type="application/json")
    for name, value in headers or ():
        response.headers[name.decode()] = value.decode()
    return response


def _error_json(exc: InferenceError) -> Response:
    return _json_response(error_body(exc), exc.http_status, error_headers(exc))


def _build_quart(cluster: Any, keys: KeyChecker) -> QuartTrio:
    app = QuartTrio("atomr_infer_gateway")
    # "//v1//models" is a 404 in JSON like any unknown path, not a 308 to an HTML page
    app.url_map.merge_slashes = False
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = None

    @app.before_request
    async def _auth() -> Response | None:
        if request.path.startswith(("/v1/", "/admin/")):
            try:
                raw = request.headers.get("authorization")
                g.tenant = keys.check(raw.encode("latin1") if raw else None)
            except InferenceError as exc:
                return _error_json(exc)
        return None

    @app.after_request
    async def _echo_request_id(response: Response) -> Response:
        response.headers["x-request-id"] = _request_id(
            (request.headers.get("x-request-id") or "").encode("latin1", "replace")
        )
        return response

    @app.get("/health/live")
    async def live() -> Response:
        return _json_response({"status": "ok"})

    @app.get("/health/ready")
    async def ready() -> Response:
        status = await _maybe_await(cluster.status())
        body = {
            "ready": bool(status.ready),
            "deployments": [
                {"name": d.name, "state": to_plain(d.state), "reason": getattr(d, "reason", None)}
                for d in status.deployments
            ],
        }
        return _json_response(body, 200 if status.ready else 503)

    @app.get("/v1/status")
    async def cluster_status() -> Response:
        status = await _maybe_await(cluster.status())
        deployments = await _maybe_await(cluster.list())
        tenant = getattr(g, "tenant", None)
        # a tenant's key sees its own tenant only; a cluster key (or no auth) sees all
        tenants = [
            to_plain(t)
            for t in getattr(status, "tenants", ())
            if tenant is None or t.name == tenant
        ]
        return _json_response(
            {
                "name": status.name,
                "ready": bool(status.ready),
                "state_scope": getattr(status, "state_scope", "process"),
                "deployments": [to_plain(d) for d in deployments],
                "tenants": tenants,
                "pipelines": [to_plain(p) for p in getattr(status, "pipelines", ())],
            }
        )

    @app.post("/admin/rotate-credentials")
    async def rotate() -> Response:
        name = request.args.get("deployment")
        if name is None and await request.get_data():
            try:
                body = parse_json_body(await request.get_data())
            except InferenceError as exc:
                return _error_json(exc)
            name = body.get("deployment")
            if name is not None and not isinstance(name, str):
                return _error_json(
                    BadRequestError("'deployment' must be a string", param="deployment")
                )
        try:
            results = await cluster.rotate_credentials(name)
        except InferenceError as exc:
            return _error_json(exc)
        payload: dict[str, Any] = {"deployments": [to_plain(r) for r in results]}
        failed = [r for r in results if not r.ok]
        if not failed:
            return _json_response(payload)
        summary = "; ".join(f"{r.deployment}: {r.error}" for r in failed)
        payload["error"] = {
            "message": f"credential rotation failed ({summary}); the old sessions keep serving",
            "type": "upstream_error",
            "param": None,
            "code": "rotation_failed",
        }
        return _json_response(payload, 502)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            cluster.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def _model(d: Any) -> dict[str, Any]:
        return {"id": d.name, "object": "model", "created": 0, "owned_by": str(to_plain(d.runtime))}

    def _pipeline(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "atomr-pipeline"}

    async def _models() -> list[dict[str, Any]]:
        deployments = [_model(d) for d in await _maybe_await(cluster.list())]
        pipelines = getattr(getattr(cluster, "config", None), "pipelines", ())
        entries = deployments + [_pipeline(p.name) for p in pipelines]
        visible = _visible(cluster, [entry["id"] for entry in entries])
        return [entry for entry in entries if entry["id"] in visible]

    @app.get("/v1/models")
    async def models() -> Response:
        return _json_response({"object": "list", "data": await _models()})

    @app.get("/v1/models/<path:model_id>")
    async def model(model_id: str) -> Response:
        for entry in await _models():
            if entry["id"] == model_id:
                return _json_response(entry)
        return _error_json(
            NotFoundError(
                f"model {model_id!r} does not exist; GET /v1/models lists them", model=model_id
            )
        )

    @app.errorhandler(404)
    async def not_found(_: Exception) -> Response:
        exc = NotFoundError(
            f"no route {request.method} {request.path}; see GET /v1/models and the OpenAI API paths"
        )
        body = error_body(exc)
        body["error"]["code"] = "not_found"
        return _json_response(body, 404)

    @app.errorhandler(405)
    async def bad_method(_: Exception) -> Response:
        body = {
            "error": {
                "message": f"method {request.method} is not allowed on {request.path}",
                "type": "invalid_request_error",
                "param": None,
                "code": "method_not_allowed",
            }
        }
        return _json_response(body, 405)

    return app


def create_app(cluster: Any) -> Any:
    """The gateway's ASGI app for ``cluster`` (see the module docstring)."""
    settings = cluster.config.cluster
    keys = KeyChecker(settings.api_keys, getattr(cluster.config, "keys", ()))
    app: Any = _Gateway(cluster, _build_quart(cluster, keys))
    origins = getattr(settings, "cors_origins", ())
    return CORSMiddleware(app, origins) if origins else app
