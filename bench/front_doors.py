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


def _batch(passthrough: bool) -> ExecuteBatch:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    return ExecuteBatch(
        request_id="bench",
        model="m",
        messages=(Message(role="user", content="hi"),),
        stream=True,
        passthrough=Passthrough(dialect="anthropic.messages", body=body) if passthrough else None,
    )


def _run(events: list[SSEEvent], batch: ExecuteBatch, make_encoder: Callable[[], Any]) -> float:
    provider = AnthropicProvider(AnthropicConfig(), "m")
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
    plain, passed = _batch(False), _batch(True)
    cases: list[tuple[str, ExecuteBatch, Callable[[], Any]]] = [
        (
            "chat",
            plain,
            lambda: ChatStreamEncoder(
                response_id="chatcmpl-bench", created=0, model="m", include_usage=True
            ),
        ),
        ("messages passthrough", passed, lambda: MessagesStreamEncoder(MessagesRequest(passed))),
        ("messages translated", plain, lambda: MessagesStreamEncoder(MessagesRequest(plain))),
        (
            "responses translated",
            plain,
            lambda: ResponsesStreamEncoder(
                ResponsesRequest(plain, conversation=(), store=False, echo={}), ResponseStore()
            ),
        ),
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, ", end=""
    )
    print(f"Python {sys.version.split()[0]}; {args.events} deltas, best of {args.repeat}")
    print(f"{'path':<24}{'µs/event':>10}{'vs chat':>10}")
    base = None
    for name, batch, make in cases:
        best = min(_run(events, batch, make) for _ in range(args.repeat))
        per_event = best / len(events) * 1e6
        base = base or per_event
        print(f"{name:<24}{per_event:>10.2f}{per_event / base:>9.2f}x")


if __name__ == "__main__":
    main()
