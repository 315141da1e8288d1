"""The gemini runtime: a ``Provider`` for the remote engine and the ``ModelRunner``.

The engine does queueing, rate limits, the breaker, retries, 401 rebuilds, deadlines and
cancellation; this module says how a batch becomes a ``generateContent`` request (AI
Studio or Vertex AI) and how answers become chunks (through the SDK-free :mod:`._wire`).
For Vertex AI with refreshable tokens, ``run`` also refreshes the token on a timer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from atomr_infer_core import (
    ExecuteBatch,
    FinishReason,
    RequestKind,
    RuntimeKind,
    Secret,
    SessionRebuildCause,
    TokenChunk,
)
from atomr_infer_core.errors import InferenceError, MalformedStreamError, UnauthorizedError
from atomr_infer_remote import EngineRunner, ProviderRequest, SSEEvent

from ._config import GeminiConfig
from ._wire import ResponseState, build_request_body, refine_error

__all__ = ["GeminiProvider", "GeminiRunner"]

log = logging.getLogger(__name__)


class GeminiProvider:
    """Gemini's ``generateContent`` as the remote engine's ``Provider``."""

    name = "gemini"

    def __init__(self, config: GeminiConfig, model: str) -> None:
        self.config = config
        self.model = model
        self._urls = {s: config.url(model, stream=s) for s in (False, True)}
        self._safety = [{"category": s.category, "threshold": s.threshold} for s in config.safety]

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        body = build_request_body(batch, safety_settings=self._safety)
        headers = dict(self.config.extra_headers)
        if credential is not None:
            if self.config.is_vertex:
                headers["authorization"] = f"Bearer {credential.reveal()}"
            else:
                # sent, unlike the original (which built the keyed URL after the request)
                headers["x-goog-api-key"] = credential.reveal()
        return ProviderRequest(
            url=self._urls[batch.stream], headers=headers, json=body, stream=batch.stream
        )

    def parse_response(self, batch: ExecuteBatch, body: Any) -> Sequence[TokenChunk]:
        if not isinstance(body, dict):
            raise MalformedStreamError("gemini: the answer is not a JSON object")
        chunks = ResponseState(request_id=batch.request_id).feed(body)
        if any(c.finish_reason for c in chunks):
            return chunks
        # a complete answer that names no reason finished normally
        done = TokenChunk(request_id=batch.request_id, finish_reason=FinishReason.STOP)
        return [*chunks, done]

    def stream_parser(self, batch: ExecuteBatch) -> _ContentStream:
        return _ContentStream(ResponseState(request_id=batch.request_id))

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        return refine_error(status, body)


class _ContentStream:
    """One streamed answer. Gemini has no end marker: the body ends after the event that
    carries the last ``finishReason``; ending before one means the stream was cut."""

    finished = False

    def __init__(self, state: ResponseState) -> None:
        self.state = state
        self.saw_finish = False

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        chunks = self.state.feed_text(event.data)
        if any(c.finish_reason is not None for c in chunks):
            self.saw_finish = True
        return chunks

    def end(self) -> Sequence[TokenChunk]:
        if not self.saw_finish:
            raise MalformedStreamError(
                "gemini: the stream ended before a finishReason (the connection was cut); "
                "the answer is incomplete"
            )
        return []


class GeminiRunner(EngineRunner):
    """A ``ModelRunner`` for one replica of a gemini deployment (see EngineRunner).

    ``run`` also owns, for Vertex AI tokens that are not static, a task refreshing the
    token every ``token_refresh_interval``.
    """

    runtime_kind = RuntimeKind(RuntimeKind.GEMINI)
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION})
    model_prefixes = ("google/",)

    def make_provider(self, config: GeminiConfig, model: str) -> GeminiProvider:
        return GeminiProvider(config, model)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.run)
            if self.credentials_supplied or self.config.refreshes_tokens:
                nursery.start_soon(self._refresh_tokens)
            task_status.started()

    async def _refresh_tokens(self) -> None:
        while True:
            await trio.sleep(self.config.token_refresh_interval)
            try:
                await self.engine.rebuild_session(SessionRebuildCause.REMOTE_CONFIG_CHANGE)
            except UnauthorizedError as error:
                # the old token stays; a 401 will try again
                log.warning("gemini: refreshing the access token failed: %s", error.message)
