"""The onnx runtime enforces schemas and tool calls like the torch runtime does: the same
greedy constrained output, validating, beside free sequences that stay as they were."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from atomr_infer_core import ExecuteBatch, FinishReason, Message, SamplingParams, StepModel
from atomr_infer_core.errors import UnsupportedParameterError
from atomr_infer_onnx import OnnxCausalLM, OnnxConfig

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["cat", "dog"]},
        "legs": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 9},
            "maxItems": 2,
        },
    },
    "required": ["name", "kind", "legs"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "feed",
        "parameters": {
            "type": "object",
            "properties": {
                "pet": {"enum": ["cat", "dog"]},
                "grams": {"type": "integer", "minimum": 1, "maximum": 99},
            },
            "required": ["pet", "grams"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[StepModel, StepModel]:
    """(onnx, torch) on one tiny GPT-2 with room for a tool list in the prompt."""
    pytest.importorskip("atomr_infer_torch")
    from atomr_infer_torch import TorchCausalLM, TorchConfig, export_onnx
    from atomr_infer_torch.testing import build_tiny_gpt2

    root = tmp_path_factory.mktemp("tiny-1k")
    gpt2 = build_tiny_gpt2(root / "gpt2", n_positions=1024)
    export_onnx(str(gpt2), root / "onnx")
    onnx = OnnxCausalLM(
        OnnxConfig(path=str(root / "onnx"), providers=("CPUExecutionProvider",)),
        path=str(root / "onnx"),
    )
    onnx.load()
    torch_model = TorchCausalLM(TorchConfig(device="cpu"), weights=str(gpt2))
    torch_model.load()
    return onnx, torch_model


def _chat(i: int, **kw: Any) -> ExecuteBatch:
    sampling = {"max_tokens": 100, **kw.pop("sampling", {})}
    return ExecuteBatch(
        request_id=f"r{i}",
        model="tiny",
        messages=[Message(role="user", content=f"the dog {i} sat")],
        sampling=SamplingParams(**sampling),
        **kw,
    )


def _run(model: StepModel, batches: list[ExecuteBatch]) -> list[list[Any]]:
    outputs: list[list[Any]] = [[] for _ in batches]
    step = model.step([(f"s{i}", b) for i, b in enumerate(batches)], [])
    done: set[int] = set()
    while True:
        for out in step:
            i = int(out.seq_id[1:])
            outputs[i].append(out)
            if out.finish_reason is not None or out.error is not None:
                done.add(i)
        if len(done) == len(batches):
            return outputs
        step = model.step([], [])


def _text(outs: list[Any]) -> str:
    return "".join(o.text_delta for o in outs)


FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}}


def test_onnx_constrained_output_validates_and_matches_torch(
    models: tuple[StepModel, StepModel],
) -> None:
    onnx, torch_model = models
    free = [_chat(i) for i in range(2)]
    alone = [_text(_run(onnx, [b])[0]) for b in free]
    mixed = [_chat(10, response_format=FORMAT), free[0], _chat(11, response_format=FORMAT), free[1]]
    outputs = _run(onnx, mixed)
    assert [_text(outputs[1]), _text(outputs[3])] == alone
    on_torch = _run(torch_model, mixed)
    for i in (0, 2):
        jsonschema.validate(json.loads(_text(outputs[i])), SCHEMA)
        assert _text(outputs[i]) == _text(on_torch[i])


def test_onnx_tool_call_and_logprobs(models: tuple[StepModel, StepModel]) -> None:
    onnx, torch_model = models
    (outs,) = _run(onnx, [_chat(0, tools=[TOOL], tool_choice="required")])
    assert outs[-1].finish_reason is FinishReason.TOOL_CALLS
    (call,) = outs[-1].tool_call_deltas
    assert call["function"]["name"] == "feed"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TOOL["function"]["parameters"])
    asked = _chat(1, sampling={"max_tokens": 5, "logprobs": True, "top_logprobs": 2})
    a = [e for o in _run(onnx, [asked])[0] for e in o.logprobs["content"]]
    b = [e for o in _run(torch_model, [asked])[0] for e in o.logprobs["content"]]
    assert [e["token"] for e in a] == [e["token"] for e in b]
    assert [e["logprob"] for e in a] == pytest.approx([e["logprob"] for e in b], abs=1e-4)
    assert all(len(e["top_logprobs"]) == 2 for e in a)


def test_onnx_refuses_an_uncompilable_schema(models: tuple[StepModel, StepModel]) -> None:
    onnx, _ = models
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}
    with pytest.raises(UnsupportedParameterError, match='"not"'):
        onnx.prompt_tokens(_chat(0, response_format=bad))
