"""``/v1/completions`` with an array of prompts, answered as OpenAI does.

Each prompt is its own batch through the cluster (its own admission, retries, fallbacks);
the answer has ``n`` choices per prompt, prompt ``p``'s choice ``c`` at index ``p * n + c``,
and the usage of all of them. Unary requests run up to :data:`PROMPT_CONCURRENCY` prompts at
a time (a request of 2,048 prompts must not fill a deployment's queue and shed everyone
else's requests); a stream sends them one after the other (each chunk names its choice
index). The first prompt that fails fails the request, and cancels the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import trio

from atomr_infer_core import ExecuteBatch, TokenChunk, Tokens, TokensBuilder, TokenUsage
from atomr_infer_core.errors import InferenceError

__all__ = ["PROMPT_CONCURRENCY", "complete_prompts", "shift_chunk"]

#: prompts of one request in flight at once
PROMPT_CONCURRENCY = 4


def shift_chunk(chunk: TokenChunk, prompt: int, n: int) -> TokenChunk:
    """``chunk`` of prompt number ``prompt`` as a choice of the whole answer (usage dropped:
    the caller sums the prompts' usage)."""
    return attrs.evolve(chunk, index=chunk.index + prompt * n, usage=None)


async def complete_prompts(cluster: Any, batches: Sequence[ExecuteBatch]) -> Tokens:
    """Every prompt's answer in one :class:`Tokens`; raises the first prompt's error."""
    results: list[tuple[list[TokenChunk], TokenUsage, Any] | None] = [None] * len(batches)
    failures: list[InferenceError] = []
    limiter = trio.CapacityLimiter(PROMPT_CONCURRENCY)

    async def one(i: int, batch: ExecuteBatch, cancel_scope: trio.CancelScope) -> None:
        chunks: list[TokenChunk] = []
        usage = TokenUsage()
        try:
            async with limiter, cluster.execute(batch) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    usage = chunk.usage if chunk.usage is not None else usage
                deployment = getattr(stream, "deployment", None)
        except InferenceError as exc:
            failures.append(exc)
            cancel_scope.cancel()
            return
        results[i] = (chunks, usage, deployment)

    async with trio.open_nursery() as nursery:
        for i, batch in enumerate(batches):
            nursery.start_soon(one, i, batch, nursery.cancel_scope)
    if failures:
        raise failures[0]
    n = batches[0].sampling.n
    builder = TokensBuilder(request_id=batches[0].request_id)
    total = TokenUsage()
    answered = [r for r in results if r is not None]  # every one: no prompt failed
    for p, (chunks, usage, _) in enumerate(answered):
        for chunk in chunks:
            builder.add(shift_chunk(chunk, p, n))
        total = total + usage
    tokens = builder.build(deployment=answered[0][2])
    return attrs.evolve(tokens, usage=total)
