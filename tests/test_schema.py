"""The config file's JSON Schema: in sync with the attrs classes, agreeing with the loader,
and accepting every example the docs show."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from atomr_infer._cli import main, schema_text
from atomr_infer_core import ConfigError
from atomr_infer_core.config import config_schema, load_config

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "atomr.schema.json"
VALIDATOR = jsonschema.Draft202012Validator(config_schema())
_TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.S)


def _doc_examples() -> list[tuple[str, str]]:
    docs = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    docs += sorted(ROOT.glob("plugins/*/README.md"))
    found = []
    for path in docs:
        for i, block in enumerate(_TOML_BLOCK.findall(path.read_text())):
            if "[project]" in block:  # a plugin's pyproject.toml, not a project file
                continue
            found.append((f"{path.relative_to(ROOT)}#{i}", block))
    examples = ROOT / "examples"
    if examples.is_dir():
        for path in sorted(examples.rglob("*.toml")):
            if path.name != "pyproject.toml":
                found.append((str(path.relative_to(ROOT)), path.read_text()))
    return found


def _errors(data: dict[str, Any]) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(data)]


def test_the_committed_schema_is_what_the_command_generates() -> None:
    assert COMMITTED.read_text() == schema_text(), (
        "docs/atomr.schema.json is stale: run `python -m atomr_infer schema --out "
        "docs/atomr.schema.json`"
    )


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(COMMITTED.read_text()))


def test_the_docs_have_examples_to_check() -> None:
    assert len(_doc_examples()) >= 5


@pytest.mark.parametrize(("where", "text"), _doc_examples(), ids=lambda v: v[:40])
def test_every_example_in_the_docs_validates(where: str, text: str) -> None:
    assert _errors(tomllib.loads(text)) == [], where


BASE = {"deployment": [{"name": "chat", "model": "mock", "runtime": "mock"}]}


def _with(**deployment: Any) -> dict[str, Any]:
    return {"deployment": [{**BASE["deployment"][0], **deployment}]}


ACCEPTED = [
    BASE,
    _with(timeouts={"request_timeout": "250ms", "read_timeout": 1500}),
    _with(runtime={"custom": "mock"}),
    _with(serving={"on_capacity_exhausted": "reject"}),
    {**BASE, "cluster": {"log_format": "json", "cors_origins": ["*"]}},
    {**BASE, "telemetry": {"endpoint": "http://127.0.0.1:4318", "capture_content": True}},
]
REFUSED = [
    _with(replicas=0),
    _with(replicas="2"),
    _with(timeouts={"request_timeout": "soon"}),
    _with(timeouts={"request_timeout": 0}),
    _with(serving={"on_capacity_exhausted": "drop"}),
    _with(circuit_breaker={"failure_treshold": 3}),
    {**BASE, "cluster": {"log_format": "xml"}},
    {**BASE, "telemetry": {"endpiont": "http://127.0.0.1:4318"}},
    {"deployment": [{"name": "chat"}]},
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_schema_and_loader_accept_the_same_good_files(data: dict[str, Any]) -> None:
    assert _errors(data) == []
    load_config(data, env={})


@pytest.mark.parametrize("data", REFUSED)
def test_schema_and_loader_refuse_the_same_bad_files(data: dict[str, Any]) -> None:
    assert _errors(data) != []
    with pytest.raises(ConfigError):
        load_config(data, env={})


def test_schema_command_prints_or_writes_it(tmp_path: Path, capsys: Any) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()
    out = tmp_path / "atomr.schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert out.read_text() == schema_text()
