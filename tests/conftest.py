"""Core and runtime tests never load entry points: plugins are passed explicitly."""

from __future__ import annotations

import os

os.environ.setdefault("ATOMR_INFER_LOAD_PLUGINS", "")
