"""What a runner yields: chunks, usage, finish reasons, and their aggregate ``Tokens``."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ["Choice", "FinishReason", "TokenChunk", "TokenUsage", "Tokens", "TokensBuilder"]


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class TokenUsage:
    """Token counts of one request. ``cached_tokens`` and ``reasoning_tokens`` are parts
    of ``input_tokens`` and ``output_tokens`` respectively, as OpenAI reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    #: Anthropic's prompt-cache writes (billed separately)
    cache_creation_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_creation_tokens=self.cache_creation_tokens + other.cache_creation_tokens,
        )


@attrs.frozen(kw_only=True)
class TokenChunk:
    """One step of output.

    ``usage``, when present, is the request's cumulative usage so far: aggregation takes
    the last one reported and never adds them up. ``index`` is the choice (``n > 1``).
    ``embeddings`` carries embedding results, one vector per input, in input order.
    """

    request_id: str = ""
    text_delta: str = ""
    index: int = 0
    tool_call_deltas: tuple[Mapping[str, Any], ...] | None = None
    usage: TokenUsage | None = None
    finish_reason: FinishReason | None = None
    embeddings: tuple[tuple[float, ...], ...] | None = None
    logprobs: Any = None
    #: the model's reasoning text for this step, where the runtime reports it (Anthropic
    #: thinking, ``reasoning_content`` of OpenAI-compatible servers); not part of the answer
    reasoning_delta: str = ""
    #: the upstream's own bytes for this step (an SSE event, or the whole JSON body),
    #: when the runner served a ``Passthrough``: sent to the client as they are
    raw: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class Choice:
    index: int = 0
    text: str = ""
    finish_reason: FinishReason | None = None
    #: merged tool calls (OpenAI shape), when the model called tools
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    #: the reasoning text the runtime reported, if any
    reasoning: str = ""


@attrs.frozen(kw_only=True)
class Tokens:
    """The whole answer of one request."""

    request_id: str = ""
    choices: tuple[Choice, ...] = ()
    usage: TokenUsage = attrs.Factory(TokenUsage)
    embeddings: tuple[tuple[float, ...], ...] | None = None
    #: the deployment that served the request
    deployment: str | None = None
    #: cost in USD from the deployment's price table, when known
    cost_usd: float | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.choices[0].finish_reason if self.choices else None

    @classmethod
    def from_chunks(cls, chunks: Iterable[TokenChunk], **kw: Any) -> Tokens:
        builder = TokensBuilder()
        for chunk in chunks:
            builder.add(chunk)
        return builder.build(**kw)


@attrs.define
class _ChoiceAcc:
    parts: list[str] = attrs.Factory(list)
    reasoning: list[str] = attrs.Factory(list)
    finish_reason: FinishReason | None = None
    tool_calls: dict[int, dict[str, Any]] = attrs.Factory(dict)


def _merge_tool_delta(calls: dict[int, dict[str, Any]], delta: Mapping[str, Any]) -> None:
    """Merge an OpenAI-style streamed tool-call delta (arguments arrive in pieces)."""
    idx = int(delta.get("index", len(calls)))
    call = calls.setdefault(idx, {"id": None, "type": "function", "function": {}})
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] = call["function"].get("name", "") + fn["name"]
    if "arguments" in fn and fn["arguments"] is not None:
        call["function"]["arguments"] = call["function"].get("arguments", "") + fn["arguments"]


@attrs.define
class TokensBuilder:
    """Aggregates chunks into :class:`Tokens`; usage is the last one reported."""

    request_id: str = ""
    usage: TokenUsage | None = None
    embeddings: tuple[tuple[float, ...], ...] | None = None
    _choices: dict[int, _ChoiceAcc] = attrs.Factory(dict)

    def add(self, chunk: TokenChunk) -> None:
        if chunk.request_id and not self.request_id:
            self.request_id = chunk.request_id
        acc = self._choices.setdefault(chunk.index, _ChoiceAcc())
        if chunk.text_delta:
            acc.parts.append(chunk.text_delta)
        if chunk.reasoning_delta:
            acc.reasoning.append(chunk.reasoning_delta)
        for delta in chunk.tool_call_deltas or ():
            _merge_tool_delta(acc.tool_calls, delta)
        if chunk.finish_reason is not None:
            acc.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.embeddings is not None:
            self.embeddings = (self.embeddings or ()) + chunk.embeddings

    def text(self, index: int = 0) -> str:
        acc = self._choices.get(index)
        return "".join(acc.parts) if acc else ""

    def build(self, **kw: Any) -> Tokens:
        choices = tuple(
            Choice(
                index=i,
                text="".join(acc.parts),
                finish_reason=acc.finish_reason,
                tool_calls=tuple(acc.tool_calls[k] for k in sorted(acc.tool_calls)),
                reasoning="".join(acc.reasoning),
            )
            for i, acc in sorted(self._choices.items())
        )
        return Tokens(
            request_id=self.request_id,
            choices=choices,
            usage=self.usage or TokenUsage(),
            embeddings=self.embeddings,
            **kw,
        )
