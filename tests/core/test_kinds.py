from __future__ import annotations

import pytest

from atomr_infer_core import (
    RuntimeKind,
    infer_runtime,
    register_model_patterns,
    unregister_model_patterns,
)


def test_only_registered_patterns_claim_names() -> None:
    # no built-in table: without a plugin's declaration nothing is inferred
    assert infer_runtime("gpt-4o") is None
    register_model_patterns("openai", ["gpt-*", "o1"])
    try:
        assert infer_runtime("GPT-4O") == "openai"
        assert infer_runtime("o1") == "openai"
        assert infer_runtime("o1-mini") is None
    finally:
        unregister_model_patterns("openai")
    assert infer_runtime("gpt-4o") is None


def test_the_most_specific_pattern_wins_whatever_the_order() -> None:
    register_model_patterns("torch", ["meta-llama/*", "gpt-4o-local*"])
    register_model_patterns("openai", ["gpt-*"])
    try:
        assert infer_runtime("meta-llama/Llama-3.1-8B") == "torch"
        assert infer_runtime("gpt-4o-local-q4") == "torch"
        assert infer_runtime("gpt-4o") == "openai"
        register_model_patterns("torch", ["meta-llama/*"])  # registering again replaces
        assert infer_runtime("gpt-4o-local-q4") == "openai"
    finally:
        unregister_model_patterns("torch")
        unregister_model_patterns("openai")
    assert infer_runtime("meta-llama/Llama-3.1-8B") is None


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("open_ai", "openai"),
        ("OpenAI", "openai"),
        ("lite_llm", "litellm"),
        ("ort", "onnx"),
        ("mock", "mock"),
        ("mistral_rs", "mistralrs"),
    ],
)
def test_runtime_kind_accepts_the_originals_spellings(spelling: str, name: str) -> None:
    kind = RuntimeKind(spelling)
    assert kind == name
    assert kind.package == f"atomr-infer-{name}"


def test_runtime_kind_rejects_empty_and_non_strings() -> None:
    with pytest.raises(ValueError):
        RuntimeKind("  ")
    with pytest.raises(TypeError):
        RuntimeKind(3)  # type: ignore[arg-type]


def test_remote_runtimes() -> None:
    assert RuntimeKind("openai").is_remote
    assert not RuntimeKind("torch").is_remote
