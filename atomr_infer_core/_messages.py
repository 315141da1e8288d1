"""What a request carries: messages, content parts, sampling parameters, the batch."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from ._validators import at_least, between, optional

__all__ = [
    "ContentPart",
    "ExecuteBatch",
    "ImageBase64Part",
    "ImageUrlPart",
    "Message",
    "Passthrough",
    "Priority",
    "RequestKind",
    "Role",
    "SamplingParams",
    "TextPart",
    "estimate_tokens",
]


class Role(str, enum.Enum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"

    def __str__(self) -> str:
        return self.value


class Priority(enum.IntEnum):
    """Queue priority: higher is served first; FIFO within a level."""

    BACKGROUND = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class RequestKind(str, enum.Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class TextPart:
    text: str = attrs.field(validator=attrs.validators.instance_of(str))
    type: str = attrs.field(default="text", init=False)


@attrs.frozen(kw_only=True)
class ImageUrlPart:
    url: str = attrs.field(validator=attrs.validators.instance_of(str))
    #: OpenAI's ``detail`` hint (``"auto"``, ``"low"``, ``"high"``) when given.
    detail: str | None = None
    type: str = attrs.field(default="image_url", init=False)


@attrs.frozen(kw_only=True)
class ImageBase64Part:
    mime: str = attrs.field(validator=attrs.validators.instance_of(str))
    #: base64 text, without the ``data:`` prefix
    data: str = attrs.field(validator=attrs.validators.instance_of(str), repr=False)
    type: str = attrs.field(default="image_base64", init=False)

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.data}"


ContentPart = TextPart | ImageUrlPart | ImageBase64Part


def _to_role(value: Role | str) -> Role:
    return value if isinstance(value, Role) else Role(value)


def _to_content(value: str | tuple[ContentPart, ...] | list[ContentPart]) -> Any:
    return value if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class Message:
    """One chat message. ``content`` is text or a tuple of content parts."""

    role: Role = attrs.field(converter=_to_role)
    content: str | tuple[ContentPart, ...] = attrs.field(default="", converter=_to_content)
    #: optional participant name (OpenAI ``name``)
    name: str | None = None
    #: tool calls an assistant message made (OpenAI shape: id, type, function)
    tool_calls: tuple[Mapping[str, Any], ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple)
    )
    #: for ``role="tool"``: which call this answers
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The text of the message, with image parts left out."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


def _stop(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _opt_range(lo: float, hi: float | None = None) -> Any:
    return optional(at_least(lo) if hi is None else between(lo, hi))


@attrs.frozen(kw_only=True)
class SamplingParams:
    """Sampling controls. ``None`` means "the runner's default"."""

    temperature: float | None = attrs.field(default=None, validator=_opt_range(0.0, 2.0))
    top_p: float | None = attrs.field(default=None, validator=_opt_range(0.0, 1.0))
    top_k: int | None = attrs.field(default=None, validator=_opt_range(0))
    max_tokens: int | None = attrs.field(default=None, validator=_opt_range(1))
    stop: tuple[str, ...] = attrs.field(default=(), converter=_stop)
    presence_penalty: float | None = attrs.field(default=None, validator=_opt_range(-2.0, 2.0))
    frequency_penalty: float | None = attrs.field(default=None, validator=_opt_range(-2.0, 2.0))
    seed: int | None = None
    #: number of choices to generate
    n: int = attrs.field(default=1, validator=at_least(1))
    logprobs: bool | None = None
    top_logprobs: int | None = attrs.field(default=None, validator=_opt_range(0, 20))


@attrs.frozen(kw_only=True)
class Passthrough:
    """A client's own request body, for a runner that speaks the client's dialect.

    A front door attaches it when the target deployment's runtime speaks the dialect the
    client spoke (``dialect``, e.g. ``"anthropic.messages"``). Such a runner sends
    ``body`` with only ``model`` rewritten, and puts the upstream's own bytes in
    ``TokenChunk.raw``; any other runner ignores it and serves the translated batch.
    ``headers`` are the client's dialect headers worth forwarding (``anthropic-beta``).
    """

    dialect: str
    body: Mapping[str, Any] = attrs.field(repr=False)
    headers: Mapping[str, str] = attrs.Factory(dict)


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token), at least 1."""
    return max(1, (len(text) + 3) // 4)


@attrs.frozen(kw_only=True)
class ExecuteBatch:
    """One request as a runner sees it.

    Exactly one of ``messages`` (chat), ``prompt`` (completion) or ``inputs``
    (embedding) is set, matching ``kind``. ``deadline`` is an absolute time on the
    caller's clock (``trio.current_time()``), or ``None`` for no deadline.
    """

    request_id: str
    model: str
    kind: RequestKind = attrs.field(default=RequestKind.CHAT, converter=RequestKind)
    messages: tuple[Message, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple)
    )
    prompt: str | None = None
    inputs: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple)
    )
    sampling: SamplingParams = attrs.Factory(SamplingParams)
    stream: bool = False
    priority: Priority = attrs.field(default=Priority.NORMAL, converter=Priority)
    tenant: str | None = None
    #: the pipeline this batch is a step of (a tenant's allowed models are checked
    #: against the pipeline's name, not the step's)
    pipeline: str | None = None
    deadline: float | None = None
    #: tokens expected in and out; used for TPM permits and budget reservations
    estimated_tokens: int = 0
    #: OpenAI-shaped tool definitions and choice, passed through to runners that support them
    tools: tuple[Mapping[str, Any], ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple)
    )
    tool_choice: Any = None
    response_format: Mapping[str, Any] | None = None
    #: end-user id for abuse tracking (OpenAI ``user``)
    user: str | None = None
    #: embeddings: requested output dimensions, when the model supports it
    dimensions: int | None = None
    #: provider-specific fields passed through untouched
    extra: Mapping[str, Any] = attrs.Factory(dict)
    #: W3C trace context (``traceparent``) of the span this request runs under; remote
    #: runtimes send it upstream so the provider's spans join the caller's trace
    traceparent: str | None = None
    #: the client's own body, for a runner of the client's dialect (see Passthrough)
    passthrough: Passthrough | None = None

    def __attrs_post_init__(self) -> None:
        present = {
            RequestKind.CHAT: self.messages is not None,
            RequestKind.COMPLETION: self.prompt is not None,
            RequestKind.EMBEDDING: self.inputs is not None,
        }
        if not present[self.kind]:
            field = {"chat": "messages", "completion": "prompt", "embedding": "inputs"}
            raise ValueError(f"a {self.kind} request needs {field[self.kind]}")

    def prompt_text(self) -> str:
        """All input text, for estimates."""
        if self.messages is not None:
            return "\n".join(m.text for m in self.messages)
        if self.prompt is not None:
            return self.prompt
        return "\n".join(self.inputs or ())

    def input_token_estimate(self) -> int:
        return estimate_tokens(self.prompt_text())

    def estimated_total_tokens(self) -> int:
        """Tokens to reserve: the explicit estimate, else input estimate + max_tokens."""
        if self.estimated_tokens > 0:
            return self.estimated_tokens
        out = 0 if self.kind is RequestKind.EMBEDDING else (self.sampling.max_tokens or 256)
        return self.input_token_estimate() + out * self.sampling.n
