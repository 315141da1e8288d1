"""The hedge delay's pure core: a bounded window of first-chunk times and its quantile."""

from __future__ import annotations

import pytest

from atomr_infer_runtimes._hedging import TtftWindow, hedge_delay, quantile_of


def test_no_quantile_until_min_samples() -> None:
    window = TtftWindow(size=8, min_samples=3)
    window.add(0.1)
    window.add(0.2)
    assert window.quantile(0.95) is None
    assert hedge_delay("p95", window) is None
    window.add(0.3)
    assert window.quantile(0.95) == 0.3
    assert hedge_delay("p50", window) == 0.2


def test_the_window_keeps_only_the_last_samples() -> None:
    window = TtftWindow(size=4, min_samples=1)
    for value in (9.0, 9.0, 9.0, 9.0, 0.1, 0.2, 0.3, 0.4):
        window.add(value)
    assert len(window) == 4
    assert window.quantile(0.99) == 0.4  # the 9 s samples aged out


def test_nearest_rank_and_bad_input() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert quantile_of(ordered, 0.95) == 95.0
    assert quantile_of(ordered, 0.5) == 50.0
    with pytest.raises(ValueError):
        quantile_of(ordered, 1.0)
    window = TtftWindow(min_samples=1)
    window.add(float("nan"))
    window.add(-1.0)
    assert len(window) == 0


def test_fixed_and_off() -> None:
    window = TtftWindow()
    assert hedge_delay(None, window) is None
    assert hedge_delay(0.4, window) == 0.4
