"""The seam between a local model and the host's continuous-batching engine.

A local runtime plugin (torch, onnx) builds a :class:`StepModel`; the runtime layer's
local engine (``atomr_infer_runtimes._batching``) turns it into a
:class:`~atomr_infer_core.ModelRunner`: it owns the scheduling loop in the replica's
nursery, admits sequences up to ``serving.max_concurrent`` and a per-step token budget,
and calls :meth:`StepModel.step` in a worker thread so the event loop stays free.

Threading contract: every method except ``capabilities``/attributes is called from one
worker thread at a time, never concurrently, so a StepModel needs no locks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from ._constraints import OutputConstraint, ToolSpec
from ._kinds import RuntimeKind, TransportKind
from ._messages import ExecuteBatch, RequestKind, SamplingParams
from ._runner import SessionRebuildCause
from ._tokens import FinishReason, TokenUsage
from .errors import DeviceOutOfMemoryError

__all__ = [
    "LOCAL_DECODER_FEATURES",
    "ResolvedSampling",
    "SamplingDefaults",
    "SequenceOutput",
    "StepModel",
    "StopScanner",
    "advance_sequence",
    "hold_tool_call",
    "out_of_memory",
    "render_prompt",
    "resolve_sampling",
]


@attrs.frozen(kw_only=True)
class SequenceOutput:
    """What one step produced for one sequence.

    ``text_delta`` is text safe to send (stop sequences already cut, partial stop
    matches held back). ``finish_reason`` set means the sequence is done and the model
    has already freed its slot and cache; ``usage`` is then the final usage.
    ``error`` set means only this sequence failed (the engine raises it to its caller).
    """

    seq_id: str
    text_delta: str = ""
    new_tokens: int = 0
    finish_reason: FinishReason | None = None
    usage: TokenUsage | None = None
    error: Exception | None = None
    #: OpenAI-shaped tool-call deltas (a tool call the decoder enforced, sent at the end)
    tool_call_deltas: tuple[Mapping[str, Any], ...] | None = None
    #: OpenAI chat-shaped logprobs of the tokens in ``text_delta`` (``{"content": [...]}``)
    logprobs: Mapping[str, Any] | None = None


#: what the local runtimes (torch, onnx) honour, by the gateway's feature names: schemas
#: and tool calls enforced by the decoder, token logprobs, several choices per request
LOCAL_DECODER_FEATURES = frozenset({"json_object", "json_schema", "tools", "logprobs", "n"})


@attrs.frozen(kw_only=True)
class SamplingDefaults:
    """A local deployment's sampling for the fields a request leaves unset.

    The one rule every local runtime follows: greedy (temperature 0) unless the request
    or the deployment (``default_temperature`` in its ``runtime_config``) says otherwise.
    Small local models ramble at OpenAI's temperature 1; a request that wants sampling
    sends ``temperature``.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0


@attrs.frozen(kw_only=True)
class ResolvedSampling:
    """What one sequence samples with: the request's fields, else the deployment's."""

    temperature: float
    top_p: float
    top_k: int
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def resolve_sampling(params: SamplingParams, defaults: SamplingDefaults) -> ResolvedSampling:
    """``params`` with every unset field taken from ``defaults`` (torch and onnx share it)."""
    return ResolvedSampling(
        temperature=defaults.temperature if params.temperature is None else params.temperature,
        top_p=defaults.top_p if params.top_p is None else params.top_p,
        top_k=defaults.top_k if params.top_k is None else params.top_k,
        seed=params.seed,
        presence_penalty=params.presence_penalty or 0.0,
        frequency_penalty=params.frequency_penalty or 0.0,
    )


@runtime_checkable
class StepModel(Protocol):
    """A local model advanced one step at a time for every active sequence at once."""

    runtime_kind: RuntimeKind
    transport_kind: TransportKind
    capabilities: frozenset[RequestKind]
    #: the most sequences one step can carry
    max_batch_size: int

    def load(self) -> None:
        """Load weights and build the session (blocking; runs in a worker thread)."""
        ...

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        """Tokens the prompt of ``batch`` takes (the engine's per-step budget uses it)."""
        ...

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        """Drop ``leaving`` (cancelled; free their slots and caches), prefill ``joining``,
        then advance every active sequence by one token. Returns one output per active
        sequence that produced something or finished. Raising means the session is
        broken: every active sequence fails and the engine calls :meth:`rebuild`.
        Running out of device memory is not a broken session: the model drops its
        batch, frees the cached memory and returns :func:`out_of_memory`'s error for
        every sequence of the step (the engine keeps serving, nothing is rebuilt)."""
        ...

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        """Embed a batch of texts (blocking). Raises BadRequestError if unsupported."""
        ...

    def rebuild(self, cause: SessionRebuildCause) -> None:
        """Drop every sequence and rebuild the model session (blocking)."""
        ...


def out_of_memory(*, name: str, device: str, work: str, lower_dtype: str) -> DeviceOutOfMemoryError:
    """The typed error for the requests of a step that ran out of device memory.

    ``work`` says what the step carried (``"a step of 3 sequence(s) (the batch held 900
    tokens)"``, ``"embedding 64 texts"``); ``lower_dtype`` how this runtime takes less
    memory per weight and cached token. The device's own message (allocator statistics)
    stays in the log, not in the client's error.
    """
    return DeviceOutOfMemoryError(
        f"local deployment {name!r} ran out of memory on {device} in {work}; the batch was "
        "dropped and the cached device memory released, so a retry may fit. To fit more, "
        "lower serving.max_concurrent (or runtime_config.max_batch_size), the requests' "
        f"max_tokens, or {lower_dtype}"
    )


class StopScanner:
    """Turns a sequence's growing decoded text into text safe to send (sans-IO).

    Feed the whole decoded text so far to :meth:`feed`; it returns the new text that can
    go out now and whether a stop sequence ended the output. Text that might still grow
    into a stop sequence is held back across steps, and so is a trailing replacement
    character (an incomplete multi-byte token). :meth:`flush` releases what is held back
    once the sequence ends for another reason (end of sequence, length).
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self.sent = 0
        self.text = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """New sendable text, and True when a stop sequence was found (the output ends
        before it)."""
        self.text = text
        start = max(0, self.sent - self._longest + 1)
        cut = min((i for s in self.stops if (i := text.find(s, start)) >= 0), default=-1)
        if cut >= 0:
            out = text[self.sent : max(cut, self.sent)]
            self.sent = max(cut, self.sent)
            return out, True
        safe = len(text)
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        for k in range(min(self._longest - 1, safe - self.sent), 0, -1):
            tail = text[safe - k : safe]
            if any(s.startswith(tail) for s in self.stops):
                safe -= k
                break
        out = text[self.sent : safe]
        self.sent = max(self.sent, safe)
        return out, False

    def flush(self) -> str:
        """Everything not yet sent (the sequence ended without a stop sequence)."""
        out = self.text[self.sent :].rstrip("\ufffd")
        self.sent = len(self.text)
        return out


def advance_sequence(
    *,
    seq_id: str,
    generated: Sequence[int],
    eos_ids: Container[int],
    ignore_eos: bool,
    max_new: int,
    prompt_len: int,
    scanner: StopScanner,
    decode: Callable[[Sequence[int]], str],
) -> SequenceOutput:
    """One decode step's output for a sequence whose newest token is ``generated[-1]``.

    Decides the finish (end of sequence, stop sequence, length), cuts the text with
    ``scanner`` and reports usage on the last step. Shared by every local runtime so
    they finish sequences the same way.
    """
    finish: FinishReason | None = None
    visible = generated
    if generated[-1] in eos_ids and not ignore_eos:
        finish = FinishReason.STOP
        visible = generated[:-1]
    delta, stopped = scanner.feed(decode(visible))
    if stopped:
        finish = FinishReason.STOP
    elif finish is None and len(generated) >= max_new:
        finish = FinishReason.LENGTH
    if finish is not None and not stopped:
        delta += scanner.flush()
    usage = None
    if finish is not None:
        usage = TokenUsage(input_tokens=prompt_len, output_tokens=len(generated))
    return SequenceOutput(
        seq_id=seq_id, text_delta=delta, new_tokens=1, finish_reason=finish, usage=usage
    )


def hold_tool_call(
    out: SequenceOutput, constraint: OutputConstraint | None, text: str, call_id: str
) -> SequenceOutput:
    """``out`` for a sequence whose output the decoder constrains to a tool call.

    Text is held back while the call is being generated; the finishing step carries the
    call as ``tool_call_deltas`` with finish reason ``tool_calls``. ``text`` is the whole
    output so far. An output cut short (``max_tokens``) goes out as text instead, with
    its own finish reason. Other sequences' outputs pass through unchanged.
    """
    if constraint is None or not constraint.is_tool_call or out.error is not None:
        return out
    if out.finish_reason is None:
        return attrs.evolve(out, text_delta="", logprobs=None)
    calls = constraint.tool_calls(text, call_id)
    if not calls:
        return attrs.evolve(out, text_delta=text, logprobs=None)
    return attrs.evolve(
        out,
        text_delta="",
        logprobs=None,
        tool_call_deltas=calls,
        finish_reason=FinishReason.TOOL_CALLS,
    )


def _tools_note(tools: Sequence[ToolSpec]) -> str:
    listed = [
        {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
        for t in tools
    ]
    return (
        "You can call these functions:\n"
        + json.dumps(listed)
        + "\nAnswer with the function call as JSON."
    )


def render_prompt(
    tokenizer: Any, batch: ExecuteBatch, *, tools: Sequence[ToolSpec] = ()
) -> tuple[str, bool]:
    """The prompt text of ``batch`` and whether the tokenizer should add special tokens.

    Chat requests use the tokenizer's chat template when it has one (it adds its own
    special tokens), else a plain ``role: text`` transcript ending in ``assistant:``.
    ``developer`` messages are sent as ``system`` (chat templates know no other).
    ``tools`` (a tool call the decoder enforces) go to the template when it renders
    tools, else into a system message listing them. Shared by the local runtimes so a
    prompt renders the same on torch and ONNX.
    """
    if batch.messages is None:
        return batch.prompt or "", True
    messages = [
        {"role": "system" if str(m.role) == "developer" else str(m.role), "content": m.text}
        for m in batch.messages
    ]
    template = getattr(tokenizer, "chat_template", None)
    kwargs: dict[str, Any] = {}
    if tools and template and "tools" in template:
        kwargs["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters),
                },
            }
            for t in tools
        ]
    elif tools:
        messages.insert(0, {"role": "system", "content": _tools_note(tools)})
    if template:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )
        return text, False
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"]), True
