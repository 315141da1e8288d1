"""``python -m atomr_infer``."""

from __future__ import annotations

from atomr_infer._cli import main

raise SystemExit(main())
