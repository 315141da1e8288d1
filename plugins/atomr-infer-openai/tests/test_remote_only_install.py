"""A remote-only install (atomr-infer + atomr-infer-openai) pulls no torch, no onnxruntime.

Builds both distributions from copies of their sources into a fresh virtual environment,
resolving their dependencies from the package index, then checks what got installed and
that the openai runtime is found through its entry point.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PLUGIN = REPO / "plugins" / "atomr-infer-openai"
HEAVY = ("torch", "onnxruntime", "onnxruntime-gpu", "transformers", "nvidia-cublas-cu12")

_CHECK = """
import importlib.metadata as md, importlib.util, json
import atomr_infer, atomr_infer_runtimes, atomr_infer_openai
eps = [ep.name for ep in md.entry_points(group="atomr_infer")]
print(json.dumps({
    "entry_points": eps,
    "torch": importlib.util.find_spec("torch") is not None,
    "onnxruntime": importlib.util.find_spec("onnxruntime") is not None,
    "dists": sorted(d.metadata["Name"].lower() for d in md.distributions()),
}))
"""


def _copy_sources(dest: Path) -> tuple[Path, Path]:
    # build from copies so nothing (build/, *.egg-info) lands in the working tree
    core = dest / "atomr-infer"
    core.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, core / name)
    for package in REPO.glob("atomr_infer*"):
        if package.is_dir() and not package.name.endswith(".egg-info"):
            shutil.copytree(
                package, core / package.name, ignore=shutil.ignore_patterns("__pycache__")
            )
    plugin = dest / "atomr-infer-openai"
    shutil.copytree(
        PLUGIN, plugin, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tests")
    )
    return core, plugin


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
def test_remote_only_install_has_no_torch_or_onnxruntime(tmp_path: Path) -> None:
    core, plugin = _copy_sources(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    install = _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            str(core),
            str(plugin),
        ]
    )
    assert install.returncode == 0, f"pip install failed:\n{install.stdout}\n{install.stderr}"
    check = _run([python, "-c", _CHECK])
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout.strip().splitlines()[-1])
    assert "openai" in report["entry_points"]
    assert report["torch"] is False
    assert report["onnxruntime"] is False
    assert not set(HEAVY) & set(report["dists"]), sorted(set(HEAVY) & set(report["dists"]))
    assert sys.executable != python
