"""The text of a request must be valid Unicode before any runner sees it.

The gateway's front door refuses lone surrogates anywhere in a body; a batch built in
code (``cluster.complete(...)`` in a trio program) skips that door. A lone surrogate
cannot be encoded as UTF-8: a remote engine fails such a request alone, but a local
runtime would meet it in its tokenizer inside a model step shared with other requests.
:func:`text_problem` finds one in the text a runner reads, so the cluster refuses the
request before it is routed.
"""

from __future__ import annotations

import re

from atomr_infer_core import ExecuteBatch, TextPart
from atomr_infer_core.errors import BadRequestError

__all__ = ["text_problem"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def _texts(batch: ExecuteBatch) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i, message in enumerate(batch.messages or ()):
        if isinstance(message.content, str):
            out.append((f"messages[{i}].content", message.content))
        else:
            for j, part in enumerate(message.content):
                if isinstance(part, TextPart):
                    out.append((f"messages[{i}].content[{j}].text", part.text))
        if message.name:
            out.append((f"messages[{i}].name", message.name))
    if batch.prompt is not None:
        out.append(("prompt", batch.prompt))
    out.extend((f"input[{i}]", text) for i, text in enumerate(batch.inputs or ()))
    out.extend((f"stop[{i}]", text) for i, text in enumerate(batch.sampling.stop))
    return out


def text_problem(batch: ExecuteBatch) -> BadRequestError | None:
    """A ``BadRequestError`` naming the first text of ``batch`` holding a lone surrogate."""
    for param, text in _texts(batch):
        if _SURROGATE.search(text):
            return BadRequestError(
                f"'{param}' contains a lone UTF-16 surrogate, which cannot be encoded as "
                "UTF-8; send valid Unicode text",
                param=param,
            )
    return None
