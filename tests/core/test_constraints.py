"""What a request asks the local decoder to enforce, and tool calls read back (sans-IO)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from atomr_infer_core import ExecuteBatch, Message, output_constraint
from atomr_infer_core.errors import BadRequestError, UnsupportedParameterError

FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
G = {"type": "function", "function": {"name": "g"}}


def _batch(**kw: Any) -> ExecuteBatch:
    return ExecuteBatch(
        request_id="r", model="m", messages=[Message(role="user", content="hi")], **kw
    )


def test_free_text_when_nothing_is_asked() -> None:
    assert output_constraint(_batch()) is None
    assert output_constraint(_batch(response_format={"type": "text"})) is None
    assert output_constraint(_batch(tools=[FN], tool_choice="none")) is None


def test_json_schema_is_kept_canonical_so_equal_schemas_share_a_grammar() -> None:
    a = output_constraint(
        _batch(response_format={"type": "json_schema", "json_schema": {"schema": {"b": 1, "a": 2}}})
    )
    b = output_constraint(
        _batch(response_format={"type": "json_schema", "json_schema": {"schema": {"a": 2, "b": 1}}})
    )
    assert a is not None and a == b
    assert a.schema == '{"a":2,"b":1}' and a.param == "response_format.json_schema"
    assert output_constraint(_batch(response_format={"type": "json_object"})).schema == (
        '{"type":"object"}'
    )


def test_required_offers_every_tool_and_a_name_picks_one() -> None:
    required = output_constraint(_batch(tools=[FN, G], tool_choice="required"))
    assert required is not None and required.is_tool_call and required.function is None
    names = [c["properties"]["name"]["const"] for c in json.loads(required.schema)["anyOf"]]
    assert names == ["f", "g"]
    named = output_constraint(
        _batch(tools=[FN, G], tool_choice={"type": "function", "function": {"name": "f"}})
    )
    assert named is not None and named.function == "f" and named.schema == '{"type":"object"}'


def test_tool_calls_come_back_in_openai_shape() -> None:
    required = output_constraint(_batch(tools=[FN, G], tool_choice="required"))
    (call,) = required.tool_calls('{"name": "g", "arguments": {"x": 1}}', "call_1")
    assert call == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "g", "arguments": '{"x": 1}'},
    }
    named = output_constraint(
        _batch(tools=[FN], tool_choice={"type": "function", "function": {"name": "f"}})
    )
    assert named.tool_calls('{"a": true}', "c")[0]["function"] == {
        "name": "f",
        "arguments": '{"a": true}',
    }
    assert required.tool_calls('{"name": "g", "argu', "c") == ()


@given(st.text(max_size=40))
def test_an_incomplete_output_is_never_a_tool_call(text: str) -> None:
    required = output_constraint(_batch(tools=[FN], tool_choice="required"))
    calls = required.tool_calls(text, "c")
    try:
        value = json.loads(text)
    except ValueError:
        assert calls == ()
    else:
        assert bool(calls) == (isinstance(value, dict) and isinstance(value.get("name"), str))


@pytest.mark.parametrize(
    ("kw", "error", "param"),
    [
        ({"tools": [FN]}, UnsupportedParameterError, "tool_choice"),
        ({"tools": [FN], "tool_choice": "auto"}, UnsupportedParameterError, "tool_choice"),
        ({"tool_choice": "required"}, BadRequestError, "tool_choice"),
        (
            {"tools": [FN], "tool_choice": {"function": {"name": "zz"}}},
            BadRequestError,
            "tool_choice",
        ),
        (
            {"tools": [{"type": "code_interpreter"}], "tool_choice": "required"},
            UnsupportedParameterError,
            "tools[0]",
        ),
        (
            {"tools": [{"type": "function", "function": {}}], "tool_choice": "required"},
            BadRequestError,
            "tools[0]",
        ),
        ({"response_format": {"type": "yaml"}}, BadRequestError, "response_format.type"),
        (
            {"response_format": {"type": "json_schema"}},
            BadRequestError,
            "response_format.json_schema",
        ),
        (
            {"tools": [FN], "tool_choice": "required", "response_format": {"type": "json_object"}},
            UnsupportedParameterError,
            "response_format",
        ),
    ],
)
def test_malformed_or_unenforceable_requests_name_their_field(
    kw: dict[str, Any], error: type[Exception], param: str
) -> None:
    with pytest.raises(error) as info:
        output_constraint(_batch(**kw))
    assert info.value.param == param
