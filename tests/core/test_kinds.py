from __future__ import annotations

import pytest

from atomr_infer_core import (
    RuntimeKind,
    infer_runtime,
    register_model_patterns,
    unregister_model_patterns,
)


@pytest.mark.parametrize(
    ("model", "runtime"),
    [
        ("gpt-4o", "openai"),
        ("gpt-4o-mini", "openai"),
        ("gpt-4.1-nano", "openai"),
        ("gpt-3.5-turbo", "openai"),
        ("gpt-5", "openai"),
        ("gpt-5-mini-2025-08-07", "openai"),
        ("o1-preview", "openai"),
        ("o1", "openai"),
        ("o3-mini", "openai"),
        ("o4-mini", "openai"),
        ("chatgpt-4o-latest", "openai"),
        ("text-embedding-3-small", "openai"),
        ("GPT-4O", "openai"),
        ("claude-3-5-sonnet-20241022", "anthropic"),
        ("anthropic/claude-3-haiku", "anthropic"),
        ("gemini-2.0-flash", "gemini"),
        ("google/gemini-1.5-flash", "gemini"),
        ("litellm/anything", "litellm"),
        ("llama-via-litellm", "litellm"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistralrs"),
        ("meta-llama/Llama-3.1-70B-Instruct", None),
        ("o2", None),
    ],
)
def test_infer_runtime_table(model: str, runtime: str | None) -> None:
    assert infer_runtime(model) == runtime


def test_plugins_extend_and_override_the_table() -> None:
    assert infer_runtime("meta-llama/Llama-3.1-8B") is None
    register_model_patterns("torch", ["meta-llama/*", "gpt-4o-local*"])
    try:
        assert infer_runtime("meta-llama/Llama-3.1-8B") == "torch"
        assert infer_runtime("gpt-4o-local-q4") == "torch"
        assert infer_runtime("gpt-4o") == "openai"
    finally:
        unregister_model_patterns("torch")
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
