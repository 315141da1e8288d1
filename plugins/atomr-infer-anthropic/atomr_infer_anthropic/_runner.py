"""The anthropic runtime: a ``Provider`` for the remote engine and the ``ModelRunner``.

The engine does queueing, rate limits, the breaker, retries, 401 rebuilds, deadlines and
cancellation; this module only says how a batch becomes a ``/v1/messages`` request and
how answers become chunks (through the SDK-free :mod:`._wire`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from atomr_infer_core import ExecuteBatch, RequestKind, RuntimeKind, Secret, TokenChunk
from atomr_infer_core.errors import InferenceError, MalformedStreamError
from atomr_infer_remote import EngineRunner, ProviderRequest, SSEEvent

from ._config import AnthropicConfig
from ._wire import StreamState, build_request_body, parse_message, refine_error

__all__ = ["DIALECT", "AnthropicProvider", "AnthropicRunner"]

#: the Passthrough dialect this runtime sends as the client wrote it
DIALECT = "anthropic.messages"


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

    def passes_through(self, batch: ExecuteBatch) -> bool:
        """Whether ``batch`` carries a Messages body to send as the client wrote it."""
        return batch.passthrough is not None and batch.passthrough.dialect == DIALECT

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        headers = dict(self._headers)
        if self.passes_through(batch):
            assert batch.passthrough is not None
            # the client's own body: only the model is rewritten, unknown fields stay
            body = {**batch.passthrough.body, "model": self.model}
            beta = batch.passthrough.headers.get("anthropic-beta")
            if beta:
                headers["anthropic-beta"] = ",".join(
                    b for b in (headers.get("anthropic-beta"), beta) if b
                )
        else:
            body = build_request_body(
                batch, model=self.model, default_max_tokens=self.config.default_max_tokens
            )
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
        state = StreamState(request_id=batch.request_id)
        return _MessageStream(state, raw=self.passes_through(batch))

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        return refine_error(status, body)


class _MessageStream:
    """One streamed answer; finished at ``message_stop``.

    With ``raw`` (a passthrough) every event, ``ping`` and unknown ones included, also
    comes out as its own SSE frame in ``TokenChunk.raw``, its data untouched.
    """

    def __init__(self, state: StreamState, *, raw: bool = False) -> None:
        self.state = state
        self.finished = False
        self.raw = raw

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        if event.event == "message_stop":
            self.finished = True
            chunks: Sequence[TokenChunk] = []
        else:
            chunks = self.state.feed(event.event, event.data)
            if not event.event or event.event == "message":
                # a proxy that drops event names: the data's type still tells
                self.finished = _is_stop(event.data)
        if self.raw:
            return _with_frame(chunks, event, self.state.request_id)
        return chunks

    def end(self) -> Sequence[TokenChunk]:
        if self.state.stopped:
            return []  # a proxy that drops message_stop: the stop reason said it all
        raise MalformedStreamError(
            "anthropic: the stream ended before message_stop (the connection was cut); "
            "the answer is incomplete"
        )


def _frame(event: SSEEvent) -> bytes:
    head = f"event: {event.event}\n" if event.event and event.event != "message" else ""
    lines = "".join(f"data: {line}\n" for line in event.data.split("\n"))
    return f"{head}{lines}\n".encode()


def _with_frame(
    chunks: Sequence[TokenChunk], event: SSEEvent, request_id: str
) -> Sequence[TokenChunk]:
    frame = _frame(event)
    if not chunks:
        return [TokenChunk(request_id=request_id, raw=frame)]
    return [attrs.evolve(chunks[0], raw=frame), *chunks[1:]]


def _is_stop(data: str) -> bool:
    try:
        return bool(json.loads(data).get("type") == "message_stop")
    except (ValueError, AttributeError):
        return False


class AnthropicRunner(EngineRunner):
    """A ``ModelRunner`` for one replica of an anthropic deployment (see EngineRunner)."""

    runtime_kind = RuntimeKind(RuntimeKind.ANTHROPIC)
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION})
    model_prefixes = ("anthropic/",)

    def make_provider(self, config: AnthropicConfig, model: str) -> AnthropicProvider:
        return AnthropicProvider(config, model)
