"""What a request asks a local decoder to enforce: a JSON schema, any JSON, or a tool call.

Sans-IO: :func:`output_constraint` reads ``response_format``, ``tools`` and
``tool_choice`` of an :class:`ExecuteBatch` and returns the JSON schema the output must
match (or ``None`` for free text); :meth:`OutputConstraint.tool_calls` turns the
constrained output back into OpenAI ``tool_calls``. The local runtimes compile the schema
with a grammar library and mask every step's logits with it
(:mod:`atomr_infer_core._guided`).

Tool calls: with ``tool_choice`` naming a function the output is that function's
arguments object; with ``"required"`` it is ``{"name": <one of the tools>, "arguments":
{...}}``. ``"auto"`` needs a chat template that renders tools and a model trained to call
them; models without one answer 400 ``unsupported_parameter``, never free text that
pretends no tool was offered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._messages import ExecuteBatch
from .errors import BadRequestError, UnsupportedParameterError

__all__ = ["OutputConstraint", "ToolSpec", "output_constraint"]


@attrs.frozen(kw_only=True)
class ToolSpec:
    """One function a request offers (OpenAI's ``tools[].function``)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = attrs.field(factory=lambda: {"type": "object"})


@attrs.frozen(kw_only=True)
class OutputConstraint:
    """The schema a sequence's output must match.

    Attributes:
        kind: ``"json_object"``, ``"json_schema"`` or ``"tool_call"``.
        schema: the JSON schema enforced, as canonical JSON (compiled grammars are
            cached under it).
        param: the request field that asked for it (errors name it).
        tools: the tools a ``tool_call`` may call.
        function: the one function a named ``tool_choice`` calls (the output is then
            its arguments object).
    """

    kind: str
    schema: str
    param: str
    tools: tuple[ToolSpec, ...] = ()
    function: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.kind == "tool_call"

    def tool_calls(self, text: str, call_id: str) -> tuple[dict[str, Any], ...]:
        """OpenAI ``tool_calls`` for a finished tool-call output ``text`` (empty when
        the output is not a complete call, as when it stopped at ``max_tokens``)."""
        try:
            value = json.loads(text)
        except ValueError:
            return ()
        if self.function is not None:
            name, arguments = self.function, value
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            name, arguments = value["name"], value.get("arguments", {})
        else:
            return ()
        call = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        return (call,)


def _canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _response_format(raw: Mapping[str, Any]) -> OutputConstraint | None:
    kind = raw.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return OutputConstraint(
            kind="json_object", schema=_canonical({"type": "object"}), param="response_format"
        )
    if kind != "json_schema":
        raise BadRequestError(
            f"response_format.type must be 'text', 'json_object' or 'json_schema' (got {kind!r})",
            param="response_format.type",
        )
    spec = raw.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
        raise BadRequestError(
            "response_format.json_schema must be an object with a 'schema' object",
            param="response_format.json_schema",
        )
    schema = spec.get("schema", {"type": "object"})
    return OutputConstraint(
        kind="json_schema", schema=_canonical(schema), param="response_format.json_schema"
    )


def _tools(raw: Sequence[Mapping[str, Any]]) -> tuple[ToolSpec, ...]:
    tools = []
    for i, tool in enumerate(raw):
        fn = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(fn, Mapping):
            raise UnsupportedParameterError(
                f"tools[{i}]: local models call function tools only "
                '({"type": "function", "function": {...}})',
                param=f"tools[{i}]",
            )
        name = fn.get("name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(name, str) or not name:
            raise BadRequestError(f"tools[{i}].function.name is required", param=f"tools[{i}]")
        if not isinstance(params, Mapping):
            raise BadRequestError(
                f"tools[{i}].function.parameters must be a JSON schema object",
                param=f"tools[{i}].function.parameters",
            )
        tools.append(
            ToolSpec(name=name, description=str(fn.get("description", "")), parameters=params)
        )
    return tuple(tools)


def _chosen_function(choice: Any, tools: tuple[ToolSpec, ...]) -> str | None:
    """The function a named ``tool_choice`` picks, or None for ``"required"``."""
    if choice == "required":
        return None
    name = choice.get("function", {}).get("name") if isinstance(choice, Mapping) else None
    if not isinstance(name, str):
        raise BadRequestError(
            "tool_choice must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if name not in {t.name for t in tools}:
        raise BadRequestError(
            f"tool_choice names {name!r}, which is not in tools "
            f"({', '.join(t.name for t in tools)})",
            param="tool_choice",
        )
    return name


def _tool_call(batch: ExecuteBatch, *, auto_tools: bool) -> OutputConstraint | None:
    choice = batch.tool_choice
    if choice == "none" or not batch.tools:
        if choice not in (None, "none", "auto"):
            raise BadRequestError("tool_choice needs tools", param="tool_choice")
        return None
    tools = _tools(batch.tools)
    if choice in (None, "auto"):
        if auto_tools:
            return None
        raise UnsupportedParameterError(
            "this local model's chat template does not render tools, so it cannot decide "
            "when to call one (tool_choice 'auto'); send tool_choice 'required' or name "
            "a function, and the decoder enforces the call",
            param="tool_choice",
        )
    function = _chosen_function(choice, tools)
    if function is not None:
        params = next(t.parameters for t in tools if t.name == function)
        return OutputConstraint(
            kind="tool_call",
            schema=_canonical(params),
            param="tools",
            tools=tools,
            function=function,
        )
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return OutputConstraint(kind="tool_call", schema=_canonical(schema), param="tools", tools=tools)


def output_constraint(batch: ExecuteBatch, *, auto_tools: bool = False) -> OutputConstraint | None:
    """The constraint ``batch`` asks for, or None for free text.

    ``auto_tools``: the model renders tools in its prompt and decides itself whether to
    call one (then ``tool_choice`` ``"auto"`` is free decoding). Raises BadRequestError
    for malformed fields and UnsupportedParameterError for what cannot be enforced.
    """
    call = _tool_call(batch, auto_tools=auto_tools)
    fmt = _response_format(batch.response_format) if batch.response_format else None
    if call is not None and fmt is not None:
        raise UnsupportedParameterError(
            "a local model enforces one of response_format and a required tool call, "
            "not both; drop one",
            param="response_format",
        )
    return call or fmt
