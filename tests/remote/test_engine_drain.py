"""After the provider's end marker the engine consumes only what is already buffered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from atomr_infer_remote._engine import _drain_buffered


async def test_buffered_tail_is_consumed() -> None:
    seen: list[bytes] = []

    async def reads() -> AsyncIterator[bytes]:
        for part in (b"a", b"b"):
            seen.append(part)
            yield part

    await _drain_buffered(reads())
    assert seen == [b"a", b"b"]


async def test_a_tail_that_needs_the_network_is_not_awaited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed: list[bool] = []

    async def reads() -> AsyncIterator[bytes]:
        try:
            yield b"buffered"
            await trio.sleep(10)
            yield b"late"
        finally:
            closed.append(True)

    await _drain_buffered(reads())
    assert trio.current_time() == 0
    assert closed == [True]
