"""Settings for every test directory (tests/ and plugins/*/tests)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _own_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test keeps the default spend ledger of the configs it loads (and of the
    gateway processes it starts) to itself, never in the user's ``~/.local/state``."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


# 2 shared cores: wall-clock health checks and deadlines would make tests flaky, not better.
settings.register_profile("atomr", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("atomr")
