"""Shared fixtures. Core tests never load entry points (ATOMR_INFER_LOAD_PLUGINS is empty)."""

from __future__ import annotations

import os

os.environ.setdefault("ATOMR_INFER_LOAD_PLUGINS", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
