"""Outputs enforced by the decoder on a tiny random GPT-2: schemas, tool calls, logprobs,
penalties; constrained and free sequences share steps without changing each other."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from atomr_infer_core import ExecuteBatch, FinishReason, Message, SamplingParams
from atomr_infer_core.errors import BadRequestError, UnsupportedParameterError
from atomr_infer_torch import TorchCausalLM, TorchConfig

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "integer", "minimum": 0, "maximum": 99999}},
            "required": ["zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "role", "tags", "address"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["utc", "cet"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TorchCausalLM:
    from atomr_infer_torch.testing import build_tiny_gpt2

    # room for a tool list in the prompt (it takes some 450 of the tiny BPE's tokens)
    path = build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-1k"), n_positions=1024)
    m = TorchCausalLM(TorchConfig(device="cpu"), weights=str(path))
    m.load()
    return m


def _chat(i: int, **kw: Any) -> ExecuteBatch:
    sampling = kw.pop("sampling", {})
    sampling.setdefault("max_tokens", 120)
    return ExecuteBatch(
        request_id=f"r{i}",
        model="tiny",
        messages=[Message(role="user", content=f"the cat {i} sat on the mat")],
        sampling=SamplingParams(**sampling),
        **kw,
    )


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _run(model: TorchCausalLM, batches: list[ExecuteBatch]) -> dict[str, list[Any]]:
    """Every batch joined at once; the outputs of each sequence, in order."""
    outputs: dict[str, list[Any]] = {f"s{i}": [] for i in range(len(batches))}
    step = model.step([(f"s{i}", b) for i, b in enumerate(batches)], [])
    done: set[str] = set()
    while True:
        for out in step:
            outputs[out.seq_id].append(out)
            if out.finish_reason is not None or out.error is not None:
                done.add(out.seq_id)
        if len(done) == len(batches):
            return outputs
        step = model.step([], [])


def _text(outs: list[Any]) -> str:
    return "".join(o.text_delta for o in outs)


def test_json_schema_outputs_validate_beside_free_sequences(model: TorchCausalLM) -> None:
    free = [_chat(i) for i in range(3)]
    alone = [_text(_run(model, [b])["s0"]) for b in free]
    constrained = [_chat(10 + i, response_format=_schema_format(PERSON)) for i in range(3)]
    mixed = [constrained[0], free[0], constrained[1], free[1], free[2], constrained[2]]
    outputs = _run(model, mixed)
    texts = [_text(outputs[f"s{i}"]) for i in range(len(mixed))]
    assert [texts[1], texts[3], texts[4]] == alone
    for i in (0, 2, 5):
        jsonschema.validate(json.loads(texts[i]), PERSON)
        assert outputs[f"s{i}"][-1].finish_reason is FinishReason.STOP


def test_a_schema_compiles_once_for_many_requests(model: TorchCausalLM) -> None:
    schema = {"type": "object", "properties": {"n": {"enum": [1, 2]}}, "required": ["n"]}
    before = model._grammars.compilations if model._grammars else 0
    batches = [_chat(i, response_format=_schema_format(schema)) for i in range(4)]
    for batch in batches:
        model.prompt_tokens(batch)
    outputs = _run(model, batches)
    assert model._grammars is not None
    assert model._grammars.compilations == before + 1
    assert {json.loads(_text(o))["n"] for o in outputs.values()} <= {1, 2}


def test_required_tool_choice_returns_a_tool_call(model: TorchCausalLM) -> None:
    batch = _chat(0, tools=[WEATHER, TIME], tool_choice="required")
    outs = _run(model, [batch])["s0"]
    assert _text(outs) == ""
    last = outs[-1]
    assert last.finish_reason is FinishReason.TOOL_CALLS
    (call,) = last.tool_call_deltas
    assert call["type"] == "function" and call["id"].startswith("call_")
    tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])


def test_a_named_tool_choice_calls_that_function(model: TorchCausalLM) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    (call,) = _run(model, [_chat(0, tools=[WEATHER, TIME], tool_choice=choice)])["s0"][
        -1
    ].tool_call_deltas
    assert call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"])["zone"] in ("utc", "cet")


@pytest.mark.parametrize(
    ("schema", "construct"),
    [
        ({"not": {"type": "string"}}, '"not"'),
        ({"if": {"type": "string"}, "then": {"minLength": 3}}, '"if"'),
        ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
    ],
)
def test_an_uncompilable_schema_is_refused_naming_the_construct(
    model: TorchCausalLM, schema: dict[str, Any], construct: str
) -> None:
    with pytest.raises(UnsupportedParameterError) as info:
        model.prompt_tokens(_chat(0, response_format=_schema_format(schema)))
    assert construct in info.value.message
    assert info.value.param == "response_format.json_schema"
    assert info.value.http_status == 400 and info.value.code == "unsupported_parameter"


def test_tool_choice_auto_and_bad_tool_choices_are_refused(model: TorchCausalLM) -> None:
    with pytest.raises(UnsupportedParameterError) as info:
        model.prompt_tokens(_chat(0, tools=[WEATHER]))
    assert info.value.param == "tool_choice"
    with pytest.raises(BadRequestError, match="not in tools"):
        model.prompt_tokens(
            _chat(0, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}})
        )
    with pytest.raises(BadRequestError, match=r"response_format\.type"):
        model.prompt_tokens(_chat(0, response_format={"type": "yaml"}))


def test_tool_choice_none_decodes_freely(model: TorchCausalLM) -> None:
    free = _text(_run(model, [_chat(0)])["s0"])
    assert _text(_run(model, [_chat(0, tools=[WEATHER], tool_choice="none")])["s0"]) == free


def test_logprobs_report_each_token_and_its_alternatives(model: TorchCausalLM) -> None:
    outs = _run(model, [_chat(0, sampling={"max_tokens": 6, "logprobs": True, "top_logprobs": 3})])
    entries = [e for o in outs["s0"] for e in o.logprobs["content"]]
    assert len(entries) == 6
    for entry in entries:
        assert len(entry["top_logprobs"]) == 3
        # greedy: the chosen token is the most likely one
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
        assert entry["logprob"] <= 0.0
    plain = _run(model, [_chat(0, sampling={"max_tokens": 6})])["s0"]
    assert all(o.logprobs is None for o in plain)
    assert _text(plain) == _text(outs["s0"])


def test_penalties_discourage_repeated_tokens(model: TorchCausalLM) -> None:
    def tokens(**sampling: Any) -> list[int]:
        batch = _chat(0, sampling={"max_tokens": 24, **sampling})
        model.step([("p", batch)], [])
        row = next(r for r in model._rows if r.seq_id == "p")
        while model._rows:
            model.step([], [])
        return row.generated

    plain = tokens()
    assert len(set(plain)) < len(plain)  # the random model repeats itself greedily
    penalized = tokens(frequency_penalty=2.0, presence_penalty=2.0)
    assert len(set(penalized)) > len(set(plain))
