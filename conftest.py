"""Settings for every test directory (tests/ and plugins/*/tests)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# 2 shared cores: wall-clock health checks and deadlines would make tests flaky, not better.
settings.register_profile("atomr", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("atomr")
