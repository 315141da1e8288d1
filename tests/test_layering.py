"""Imports point down only: prove it in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = {
    "atomr_infer_core": ["trio", "httpx", "quart", "hypercorn", "torch", "onnxruntime", "anyio"],
    "atomr_infer_remote": ["quart", "hypercorn", "torch", "onnxruntime", "atomr_infer_runtimes"],
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upper_layers(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        f"bad = [m for m in {FORBIDDEN[package]!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
