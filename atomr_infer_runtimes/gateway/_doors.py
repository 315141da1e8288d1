"""What a front door (a client dialect beside OpenAI's Chat Completions) provides.

A door parses its dialect's body onto the internal request path (an ``ExecuteBatch``),
renders the aggregated answer and the streamed chunks back in its dialect, and shapes
errors the way its clients expect. The gateway's POST fast path does the rest (auth,
body limits, disconnects, logging) for every door alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from atomr_infer_core import (
    EscalateWhen,
    FinishReason,
    TokenChunk,
    Tokens,
    TokenUsage,
    infer_runtime,
)
from atomr_infer_core.errors import InferenceError, UnsupportedParameterError

from ._openai import ParsedRequest

__all__ = ["DialectStreamEncoder", "Door", "StreamEncoder", "target_runtime", "unsupported"]

Headers = list[tuple[bytes, bytes]]


class StreamEncoder(Protocol):
    def encode(self, chunk: TokenChunk) -> bytes: ...

    def finish(self) -> bytes: ...


class Door(Protocol):
    """One dialect's request parsing, answer rendering and error shapes."""

    #: the door's own field name per feature (``json_schema`` → ``text.format``) for the
    #: 400 when a deployment cannot honour it; ``None``: the door runs no model
    feature_fields: Mapping[str, str] | None

    def authorization(self, headers: Mapping[bytes, bytes]) -> bytes | None:
        """The ``Authorization`` value to check against the gateway's keys."""
        ...

    async def prefetch(self, body: Mapping[str, Any]) -> None:
        """Fetch what ``parse`` will need from shared state (before it runs, which cannot wait)."""
        ...

    def parse(
        self, body: Mapping[str, Any], request_id: str, headers: Mapping[bytes, bytes]
    ) -> ParsedRequest: ...

    def local_answer(self, parsed: ParsedRequest) -> bytes | None:
        """A body answered without running a model (token counting), else ``None``."""
        ...

    def render(self, parsed: ParsedRequest, tokens: Tokens, raw: bytes | None) -> bytes:
        """The answer's body; ``raw`` is the upstream's own body when it was passed through."""
        ...

    def stream_encoder(self, parsed: ParsedRequest) -> StreamEncoder: ...

    def error_response(self, exc: InferenceError) -> tuple[int, Headers, bytes]: ...

    def error_event(self, exc: InferenceError) -> bytes: ...


def target_runtime(cluster: Any, model: str) -> str | None:
    """The runtime of the deployment ``model`` names, or ``None`` when it names none."""
    config = getattr(cluster, "config", None)
    if config is None:
        return None
    route = getattr(cluster, "route", None)
    try:
        name = route(model) if route is not None else model
        deployment = config.deployment(name)
    except (KeyError, InferenceError):
        return None
    kind = deployment.runtime or infer_runtime(deployment.model)
    return str(kind) if kind is not None else None


#: what a cascade checks itself before it returns a step's answer (``invalid_json``)
_JUDGED = frozenset({"json_schema", "json_object"})


def pipeline_targets(cluster: Any, model: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """``(runtime, exempt features)`` of every deployment a pipeline named ``model`` may
    answer with: a cascade's steps, a balance's members, the members of a balance step.
    A cascade step before the last is exempt from honouring JSON output when the cascade
    escalates on ``invalid_json``: its answer is validated before it is returned.
    ``()`` when ``model`` names no pipeline."""
    pipelines = {p.name: p for p in getattr(getattr(cluster, "config", None), "pipelines", ())}
    pipeline = pipelines.get(model)
    if pipeline is None:
        return ()
    judged = pipeline.kind.value == "cascade" and EscalateWhen.INVALID_JSON in pipeline.escalations
    targets: dict[str, frozenset[str]] = {}
    names = pipeline.steps or pipeline.members
    for position, name in enumerate(names):
        exempt = _JUDGED if judged and position < len(names) - 1 else frozenset()
        inner = pipelines.get(name)
        for member in inner.members if inner is not None else (name,):
            runtime = target_runtime(cluster, member)
            if runtime is not None:
                # a runtime in several places must honour what any of them needs
                targets[runtime] = targets.get(runtime, exempt) & exempt
    return tuple(targets.items())


def unsupported(param: str, what: str, target: str | None) -> UnsupportedParameterError:
    """A 400 ``unsupported_parameter`` naming ``param``: never a 200 that ignores it."""
    where = f"the {target} runtime" if target else "this deployment"
    return UnsupportedParameterError(
        f"'{param}': {what} cannot be honoured by {where}; remove it or pick a deployment "
        "that supports it",
        param=param,
    )


class DialectStreamEncoder:
    """The shared half of a door's stream encoder: what a chunk means, not how it is written.

    A chunk the upstream sent in the client's own dialect (``chunk.raw``) goes out as it came
    and the rest of the stream is passed through; otherwise usage and the finish reason are
    kept for the closing events, and text, reasoning and tool-call pieces of the one answer
    (``n > 1`` is refused up front on these doors) go to the dialect's writers.
    """

    def __init__(self) -> None:
        self._usage: TokenUsage | None = None
        self._reason: FinishReason | None = None
        self._passed = False

    def _start(self) -> bytes:
        raise NotImplementedError

    def _reasoning_delta(self, text: str) -> bytes:
        raise NotImplementedError

    def _text_delta(self, text: str) -> bytes:
        raise NotImplementedError

    def _tool_delta(self, delta: Mapping[str, Any]) -> bytes:
        raise NotImplementedError

    def encode(self, chunk: TokenChunk) -> bytes:
        if chunk.raw is not None:
            # the upstream spoke the client's dialect itself: its events go out as they came
            self._passed = True
            return chunk.raw
        if chunk.index != 0:
            return b""
        out = self._start()
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.finish_reason is not None:
            self._reason = chunk.finish_reason
        if chunk.reasoning_delta:
            out += self._reasoning_delta(chunk.reasoning_delta)
        if chunk.text_delta:
            out += self._text_delta(chunk.text_delta)
        for delta in chunk.tool_call_deltas or ():
            out += self._tool_delta(delta)
        return out
