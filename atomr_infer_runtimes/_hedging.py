"""When a hedge starts: ``hedge_after`` as a delay, from a fixed duration or a quantile of
the deployment's own observed time to first chunk. Pure: no I/O, no clock.

::

    window = TtftWindow()
    window.add(0.120)                      # each attempt's time from start to first chunk
    hedge_delay(0.4, window)               # 0.4: a fixed hedge_after
    hedge_delay("p95", window)             # None until min_samples were seen, then the p95

The window keeps the last ``size`` samples (a ring), so memory is bounded and the
quantile follows the deployment's recent behaviour. Only attempts that produced a first
chunk are samples: a hedge's cancelled loser is not, so under hedging the estimate leans
towards the faster side (the quantile is of answers that came, not of every try).
"""

from __future__ import annotations

import collections
import math

__all__ = ["TtftWindow", "hedge_delay", "quantile_of"]


class TtftWindow:
    """The last ``size`` times to first chunk of one deployment, in seconds."""

    def __init__(self, size: int = 256, *, min_samples: int = 20) -> None:
        if size < 1 or min_samples < 1:
            raise ValueError("size and min_samples must be >= 1")
        self.min_samples = min(min_samples, size)
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._sorted: list[float] | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        if seconds >= 0 and math.isfinite(seconds):
            self._samples.append(seconds)
            self._sorted = None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q < 1, nearest rank) once ``min_samples`` were seen,
        else ``None``."""
        if len(self._samples) < self.min_samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        return quantile_of(self._sorted, q)


def quantile_of(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending, non-empty list."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile is in (0, 1) (got {q})")
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def hedge_delay(hedge_after: float | str | None, window: TtftWindow) -> float | None:
    """Seconds to wait for a first chunk before hedging; ``None``: do not hedge (off, or a
    quantile with too few samples yet)."""
    if hedge_after is None:
        return None
    if isinstance(hedge_after, str):
        return window.quantile(int(hedge_after[1:]) / 100)
    return float(hedge_after)
