"""What each runtime honours, and the 400 for a request that asks for more.

The front doors translate a request onto the internal path; before it runs, the features
it asks for are checked against what the target deployment's runtime can honour. A
feature it cannot honour is refused with 400 ``unsupported_parameter`` naming the field,
never answered with a 200 that silently ignores it (the peers' most common bug: a
``response_format`` json_schema dropped on the way to a provider without one).
"""

from __future__ import annotations

from collections.abc import Mapping

from atomr_infer_core import LOCAL_DECODER_FEATURES, ExecuteBatch, ImageBase64Part, ImageUrlPart

from ._doors import unsupported

__all__ = ["HONOURED", "check_features"]

_ALL = frozenset({"tools", "json_schema", "json_object", "logprobs", "n", "images", "reasoning"})

#: runtime → the features its wire translation carries to the model
HONOURED: dict[str, frozenset[str]] = {
    "openai": _ALL,
    "litellm": _ALL,
    "anthropic": frozenset({"tools", "json_schema", "json_object", "images", "reasoning"}),
    "gemini": frozenset({"tools", "json_schema", "json_object", "n", "images"}),
    # the local decoders enforce structured output and tools token by token (llguidance)
    "torch": LOCAL_DECODER_FEATURES,
    "onnx": LOCAL_DECODER_FEATURES,
}
#: the mock runtime (and any runtime not listed): text in, text out
_TEXT_ONLY: frozenset[str] = frozenset()

_WHAT = {
    "tools": ("tools", "tool definitions"),
    "json_schema": ("response_format", "structured output (response_format json_schema)"),
    "json_object": ("response_format", "JSON mode (response_format json_object)"),
    "logprobs": ("logprobs", "token logprobs"),
    "n": ("n", "more than one choice"),
    "images": ("messages", "image input"),
    "reasoning": ("reasoning", "reasoning options"),
}


def requested_features(batch: ExecuteBatch) -> list[str]:
    """The features ``batch`` asks for, in a stable order."""
    wanted = []
    if batch.tools:
        wanted.append("tools")
    kind = (batch.response_format or {}).get("type")
    if kind in ("json_schema", "json_object"):
        wanted.append(kind)
    if batch.sampling.logprobs:
        wanted.append("logprobs")
    if batch.sampling.n > 1:
        wanted.append("n")
    for message in batch.messages or ():
        if not isinstance(message.content, str) and any(
            isinstance(p, ImageUrlPart | ImageBase64Part) for p in message.content
        ):
            wanted.append("images")
            break
    if "reasoning_effort" in batch.extra or "thinking" in batch.extra:
        wanted.append("reasoning")
    return wanted


def check_features(
    batch: ExecuteBatch,
    target: str | None,
    *,
    names: Mapping[str, str] | None = None,
    exempt: frozenset[str] = frozenset(),
) -> None:
    """Raise UnsupportedParameterError for the first feature ``target`` cannot honour.

    ``target`` ``None`` (a pipeline, or a name no deployment has) is not checked here: the
    router answers an unknown name with 404, and the gateway checks a pipeline against
    the runtime of every deployment that may answer it (``exempt``: features a pipeline
    checks itself for that deployment). ``names`` overrides the field named per feature
    (a door's own spelling).
    """
    if target is None:
        return
    honoured = HONOURED.get(target, _TEXT_ONLY)
    for feature in requested_features(batch):
        if feature not in honoured and feature not in exempt:
            param, what = _WHAT[feature]
            raise unsupported((names or {}).get(feature, param), what, target)
