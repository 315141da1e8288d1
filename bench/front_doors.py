"""Per-event cost of the front doors' stream path, gateway side.

    .venv/bin/python bench/front_doors.py [--events 20000] [--repeat 5]

One Anthropic upstream stream (``message_start``, then ``--events`` text deltas, then
``message_delta`` and ``message_stop``) is fed, event by event, to the anthropic
runtime's stream parser and then to the door's encoder, as the engine and the gateway
do for each event:

- ``chat``: the Chat Completions door today (parser → ``ChatStreamEncoder``);
- ``messages passthrough``: a Messages client on an anthropic deployment (the parser
  keeps each event's frame; the encoder sends it as it is);
- ``messages translated``: the Messages encoder over the translated chunks;
- ``responses translated``: the Responses encoder over the translated chunks.

And from an OpenAI upstream, the same number of deltas:

- ``chat (openai upstream)``: Chat Completions chunks through the openai runtime's parser
  and ``ChatStreamEncoder``;
- ``responses passthrough``: Responses events through the openai runtime's Responses
  parser (each event's frame kept) and the Responses encoder sending it as it is.

Times are process CPU time per event, best of ``--repeat`` runs. SSE decoding and
HTTP are the same for all four and left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from atomr_infer_anthropic._config import AnthropicConfig
from atomr_infer_anthropic._runner import AnthropicProvider
from atomr_infer_core import ExecuteBatch, Message, Passthrough
from atomr_infer_openai import OpenAIConfig
from atomr_infer_openai._wire import OpenAIProvider
from atomr_infer_remote import SSEEvent
from atomr_infer_runtimes.gateway._messages import MessagesRequest, MessagesStreamEncoder
from atomr_infer_runtimes.gateway._openai import ChatStreamEncoder
from atomr_infer_runtimes.gateway._responses import (
    ResponsesRequest,
    ResponsesStreamEncoder,
    ResponseStore,
)


def _events(n: int) -> list[SSEEvent]:
    def event(name: str, **data: Any) -> SSEEvent:
        return SSEEvent(event=name, data=json.dumps({"type": name, **data}))

    start = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "m"}
    start["usage"] = {"input_tokens": 10, "output_tokens": 1}
    out = [event("message_start", message=start)]
    out.append(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
    for i in range(n):
        delta = {"type": "text_delta", "text": f" word{i % 97}"}
        out.append(event("content_block_delta", index=0, delta=delta))
    out.append(event("content_block_stop", index=0))
    out.append(
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": n})
    )
    out.append(event("message_stop"))
    return out


def _chat_events(n: int) -> list[SSEEvent]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> SSEEvent:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        return SSEEvent(data=json.dumps({**body, **extra}))

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": f" word{i % 97}"}) for i in range(n)]
    usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": n + 10}
    out.append(chunk({}, "stop", usage=usage))
    return [*out, SSEEvent(data="[DONE]")]


def _responses_events(n: int) -> list[SSEEvent]:
    seq = iter(range(n + 10))

    def event(name: str, **data: Any) -> SSEEvent:
        payload = {"type": name, "sequence_number": next(seq), **data}
        return SSEEvent(event=name, data=json.dumps(payload))

    response = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    out = [event("response.created", response=response)]
    out += [event("response.output_text.delta", delta=f" word{i % 97}", **where) for i in range(n)]
    usage = {"input_tokens": 10, "output_tokens": n, "total_tokens": n + 10}
    out.append(
        event("response.completed", response={**response, "status": "completed", "usage": usage})
    )
    return out


def _batch(dialect: str | None) -> ExecuteBatch:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    return ExecuteBatch(
        request_id="bench",
        model="m",
        messages=(Message(role="user", content="hi"),),
        stream=True,
        passthrough=Passthrough(dialect=dialect, body=body) if dialect else None,
    )


def _run(
    events: list[SSEEvent], batch: ExecuteBatch, make_encoder: Callable[[], Any], provider: Any
) -> float:
    parser = provider.stream_parser(batch)
    encoder = make_encoder()
    sent = 0
    started = time.process_time()
    for event in events:
        for chunk in parser.feed(event):
            sent += len(encoder.encode(chunk))
    sent += len(encoder.finish())
    elapsed = time.process_time() - started
    assert sent > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    events = _events(args.events)
    plain, passed = _batch(None), _batch("anthropic.messages")
    responses = _batch("openai.responses")
    anthropic, openai = (
        AnthropicProvider(AnthropicConfig(), "m"),
        OpenAIProvider(OpenAIConfig(), "m"),
    )

    def chat_encoder() -> ChatStreamEncoder:
        return ChatStreamEncoder(
            response_id="chatcmpl-bench", created=0, model="m", include_usage=True
        )

    def responses_encoder(batch: ExecuteBatch) -> ResponsesStreamEncoder:
        request = ResponsesRequest(batch, conversation=(), store=False, echo={})
        return ResponsesStreamEncoder(request, ResponseStore(clock=lambda: 0.0))

    cases: list[tuple[str, list[SSEEvent], ExecuteBatch, Callable[[], Any], Any]] = [
        ("chat", events, plain, chat_encoder, anthropic),
        (
            "messages passthrough",
            events,
            passed,
            lambda: MessagesStreamEncoder(MessagesRequest(passed)),
            anthropic,
        ),
        (
            "messages translated",
            events,
            plain,
            lambda: MessagesStreamEncoder(MessagesRequest(plain)),
            anthropic,
        ),
        ("responses translated", events, plain, lambda: responses_encoder(plain), anthropic),
        ("chat (openai upstream)", _chat_events(args.events), plain, chat_encoder, openai),
        (
            "responses passthrough",
            _responses_events(args.events),
            responses,
            lambda: responses_encoder(responses),
            openai,
        ),
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, ", end=""
    )
    print(f"Python {sys.version.split()[0]}; {args.events} deltas, best of {args.repeat}")
    print(f"{'path':<24}{'µs/event':>10}{'vs chat':>10}")
    base: dict[int, float] = {}  # "vs chat": against the chat row of the same upstream
    for name, stream, batch, make, provider in cases:
        best = min(_run(stream, batch, make, provider) for _ in range(args.repeat))
        per_event = best / len(stream) * 1e6
        per_event_chat = base.setdefault(id(provider), per_event)
        print(f"{name:<24}{per_event:>10.2f}{per_event / per_event_chat:>9.2f}x")


if __name__ == "__main__":
    main()
