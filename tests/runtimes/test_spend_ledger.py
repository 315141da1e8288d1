"""Spend that survives a restart: the memory backend's SQLite ledger and Redis, and the
``cost-report`` command that reads them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from atomr_infer._cli import main
from atomr_infer_core.config import load_config
from atomr_infer_core.errors import BudgetExceededError, ConfigError
from atomr_infer_remote import SpendLog
from atomr_infer_remote._ledger import SpendLedger, bucket_end
from atomr_infer_runtimes import open_cluster

PROMPT = "x" * 40  # 10 input tokens by the estimate
WORST = (10 * 1 + 8 * 2) / 1e6  # mock prices, max_tokens = 8
REAL = (10 * 1 + 4 * 2) / 1e6  # the mock answers 4 tokens

TOML = """
[cluster]
name = "ledger"

[state]
{state}

[[deployment]]
name = "chat"
model = "mock-small"
runtime = "mock"
[deployment.budget]
max_spend_per_hour_usd = {limit!r}
"""


def write_config(tmp_path: Path, state: str, limit: float = 1.5 * WORST) -> Path:
    path = tmp_path / "atomr.toml"
    path.write_text(TOML.format(state=state, limit=limit))
    return path


async def spend(path: Path, plugin: Any, requests: int) -> list[str]:
    outcomes = []
    async with open_cluster(path, plugins=[plugin], load_entry_points=False) as cluster:
        for _ in range(requests):
            try:
                await cluster.complete("chat", prompt=PROMPT, max_tokens=8)
                outcomes.append("ok")
            except BudgetExceededError:
                outcomes.append("budget")
    return outcomes


def test_a_ledger_stamps_buckets_with_their_end_and_sums_changes(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "spend.sqlite")
    ledger.record("budget:chat:hour", 125.0, 2.0)
    ledger.record("budget:chat:hour", 170.0, -0.5)
    ledger.record("budget:chat:hour", 181.0, 1.0)
    ledger.flush()
    ledger.record("budget:chat:hour", 179.0, 0.25)
    ledger.close()
    assert bucket_end(125.0) == 180.0 and bucket_end(180.0) == 240.0
    again = SpendLedger(tmp_path / "spend.sqlite")
    assert again.load("budget:chat:hour", since=0.0) == [(180.0, 1.75), (240.0, 1.0)]
    assert again.load("budget:chat:hour", since=180.0) == [(240.0, 1.0)]
    assert again.keys("budget:") == ["budget:chat:hour"]
    again.close()


def test_spend_restored_from_a_ledger_never_expires_early() -> None:
    log = SpendLog()
    log.load([(180.0, 1.75)])  # spent somewhere in [120, 180)
    assert log.total(60.0, 239.9) == 1.75
    assert log.total(60.0, 240.0) == 0.0


async def test_memory_spend_survives_a_restart_with_a_ledger(tmp_path: Path, mock_plugin) -> None:
    path = write_config(tmp_path, 'spend_ledger = "spend.sqlite"')
    assert load_config(path).state.spend_ledger == str(tmp_path / "spend.sqlite")
    assert await spend(path, mock_plugin, 1) == ["ok"]
    # a fresh process: the first request's spend still counts, so a second does not fit
    assert await spend(path, mock_plugin, 1) == ["budget"]
    rows = sqlite3.connect(tmp_path / "spend.sqlite").execute("SELECT key FROM spend").fetchall()
    assert {r[0] for r in rows} == {"budget:chat:hour", "cost:chat"}


async def test_without_a_ledger_a_restart_forgets_spend(tmp_path: Path, mock_plugin) -> None:
    path = write_config(tmp_path, 'spend_ledger = ""')
    assert load_config(path).state.spend_ledger == ""
    assert await spend(path, mock_plugin, 1) == ["ok"]
    assert await spend(path, mock_plugin, 1) == ["ok"]


async def test_a_project_file_keeps_spend_in_the_state_home_by_default(
    tmp_path: Path, mock_plugin, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = write_config(tmp_path, 'backend = "memory"')
    ledger = tmp_path / "state" / "atomr-infer" / "ledger" / "spend.sqlite"
    assert load_config(path).state.spend_ledger == str(ledger)
    assert await spend(path, mock_plugin, 1) == ["ok"]
    assert ledger.exists()
    assert await spend(path, mock_plugin, 1) == ["budget"]  # the restart remembers
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / ".local" / "state" / "atomr-infer" / "ledger" / "spend.sqlite"
    assert load_config(path).state.spend_ledger == str(home)


async def test_an_unwritable_ledger_is_a_config_error_with_the_fix(
    tmp_path: Path, mock_plugin
) -> None:
    (tmp_path / "file").write_text("")
    path = write_config(tmp_path, 'spend_ledger = "file/spend.sqlite"')
    with pytest.raises(ConfigError) as caught:
        await spend(path, mock_plugin, 1)
    [(where, message)] = caught.value.problems
    assert where == "state.spend_ledger"
    assert 'spend_ledger = ""' in message


def test_cost_report_reads_the_ledger(tmp_path: Path, mock_plugin, capsys) -> None:
    path = write_config(tmp_path, 'spend_ledger = "spend.sqlite"', limit=1.0)
    assert trio.run(spend, path, mock_plugin, 3) == ["ok"] * 3
    assert main(["cost-report", "--config", str(path), "--by", "hour"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["deployment", "hour", "spend", "(USD)"]
    [row] = [line for line in out if line.startswith("chat ")]
    assert float(row.split()[-1]) == pytest.approx(3 * REAL, abs=1e-6)
    assert float(out[-1].split()[-1]) == pytest.approx(3 * REAL, abs=1e-6)


def test_cost_report_reads_redis(tmp_path: Path, mock_plugin, redis_server, capsys) -> None:
    path = write_config(tmp_path, f'backend = "redis"\nurl = "{redis_server.url}"', limit=1.0)
    assert trio.run(spend, path, mock_plugin, 2) == ["ok"] * 2
    assert main(["cost-report", "--config", str(path)]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chat ")]
    assert float(row.split()[-1]) == pytest.approx(2 * REAL, abs=1e-6)


def test_cost_report_without_a_record_says_how_to_keep_one(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path, 'spend_ledger = ""')
    assert main(["cost-report", "--config", str(path)]) == 1
    assert 'spend_ledger = "spend.sqlite"' in capsys.readouterr().err
    path = write_config(tmp_path, 'backend = "memory"')
    assert main(["cost-report", "--config", str(path)]) == 1
    assert "no spend recorded yet" in capsys.readouterr().err
    assert not Path(load_config(path).state.spend_ledger or "").exists()
