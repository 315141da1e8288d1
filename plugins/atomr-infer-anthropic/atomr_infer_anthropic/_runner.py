"""The anthropic runtime: a ``Provider`` for the remote engine and the ``ModelRunner``.

The engine does queueing, rate limits, the breaker, retries, 401 rebuilds, deadlines and
cancellation; this module only says how a batch becomes a ``/v1/messages`` request and
how answers become chunks (through the SDK-free :mod:`._wire`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    RequestKind,
    RunHandle,
    RunnerContext,
    RuntimeKind,
    Secret,
    SessionRebuildCause,
    TokenChunk,
    TransportKind,
)
from atomr_infer_core.errors import InferenceError, MalformedStreamError
from atomr_infer_remote import (
    CredentialProvider,
    EngineStatistics,
    HttpClientOptions,
    ProviderRequest,
    RemoteEngine,
    SSEEvent,
)

from ._config import AnthropicConfig
from ._wire import StreamState, build_request_body, parse_message, refine_error

__all__ = ["AnthropicProvider", "AnthropicRunner", "create_runner"]


class AnthropicProvider:
    """Anthropic's Messages API as the remote engine's ``Provider``."""

    name = "anthropic"

    def __init__(self, config: AnthropicConfig, model: str) -> None:
        self.config = config
        self.model = model
        self._url = config.messages_url()
        headers = {"anthropic-version": config.anthropic_version, **config.extra_headers}
        if config.anthropic_beta:
            headers["anthropic-beta"] = ",".join(config.anthropic_beta)
        self._headers = headers

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        body = build_request_body(
            batch, model=self.model, default_max_tokens=self.config.default_max_tokens
        )
        headers = dict(self._headers)
        if credential is not None:
            headers["x-api-key"] = credential.reveal()
        if batch.stream:
            headers["accept"] = "text/event-stream"
        return ProviderRequest(url=self._url, headers=headers, json=body, stream=batch.stream)

    def parse_response(self, batch: ExecuteBatch, body: Any) -> Sequence[TokenChunk]:
        if not isinstance(body, dict):
            raise MalformedStreamError("anthropic: the answer is not a JSON object")
        return parse_message(body, request_id=batch.request_id)

    def stream_parser(self, batch: ExecuteBatch) -> _MessageStream:
        return _MessageStream(StreamState(request_id=batch.request_id))

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        return refine_error(status, body)


class _MessageStream:
    """One streamed answer; finished at ``message_stop``."""

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self.finished = False

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        if event.event == "message_stop":
            self.finished = True
            return []
        chunks = self.state.feed(event.event, event.data)
        if not event.event or event.event == "message":
            # a proxy that drops event names: the data's type still tells
            self.finished = _is_stop(event.data)
        return chunks

    def end(self) -> Sequence[TokenChunk]:
        if self.state.stopped:
            return []  # a proxy that drops message_stop: the stop reason said it all
        raise MalformedStreamError(
            "anthropic: the stream ended before message_stop (the connection was cut); "
            "the answer is incomplete"
        )


def _is_stop(data: str) -> bool:
    try:
        return bool(json.loads(data).get("type") == "message_stop")
    except (ValueError, AttributeError):
        return False


class AnthropicRunner:
    """A ``ModelRunner`` for one replica of an anthropic deployment.

    ``run`` owns the engine (session, worker slots) in the replica's nursery;
    ``execute`` submits to it. Errors are ``InferenceError`` subclasses.
    """

    runtime_kind = RuntimeKind(RuntimeKind.ANTHROPIC)
    transport_kind = TransportKind.REMOTE_NETWORK
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION})

    def __init__(
        self,
        deployment: Deployment,
        config: AnthropicConfig,
        context: RunnerContext | None = None,
    ) -> None:
        context = context or RunnerContext()
        self.config = config
        self.provider = AnthropicProvider(config, _upstream_model(deployment.model))
        credentials: CredentialProvider = (
            context.services.get("credentials") or config.credentials()
        )
        self.engine = RemoteEngine(
            self.provider,
            credentials,
            deployment,
            http_options=HttpClientOptions(
                timeouts=deployment.timeouts,
                max_connections=config.max_connections,
                http2=config.http2,
            ),
            limiter=context.services.get("limiter"),
            breaker=context.services.get("breaker"),
            state=context.state,
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.engine.run(task_status=task_status)

    def execute(self, batch: ExecuteBatch) -> RunHandle:
        return self.engine.submit(batch)

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        await self.engine.rebuild_session(cause)

    def statistics(self) -> EngineStatistics:
        return self.engine.statistics()


def _upstream_model(model: str) -> str:
    """The model id the API knows: routing prefixes such as ``anthropic/`` are dropped."""
    for prefix in ("anthropic/",):
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


def create_runner(
    deployment: Deployment, config: AnthropicConfig, context: RunnerContext
) -> AnthropicRunner:
    """The plugin's factory (``RuntimePlugin.create``)."""
    return AnthropicRunner(deployment, config, context)
