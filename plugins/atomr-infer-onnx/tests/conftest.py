"""Tiny models exported to ONNX once per session (torch plugin needed to build them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny GPT-2 and encoder folders and their ONNX exports."""
    pytest.importorskip("atomr_infer_torch")
    from atomr_infer_torch import export_onnx
    from atomr_infer_torch.testing import build_tiny_encoder, build_tiny_gpt2

    root = tmp_path_factory.mktemp("tiny-onnx")
    gpt2 = build_tiny_gpt2(root / "gpt2")
    encoder = build_tiny_encoder(root / "encoder")
    export_onnx(str(gpt2), root / "gpt2-onnx")
    export_onnx(str(gpt2), root / "gpt2-onnx-nokv", kv_cache=False)
    export_onnx(str(encoder), root / "encoder-onnx")
    return {
        "gpt2": gpt2,
        "encoder": encoder,
        "gpt2-onnx": root / "gpt2-onnx",
        "gpt2-onnx-nokv": root / "gpt2-onnx-nokv",
        "encoder-onnx": root / "encoder-onnx",
    }
