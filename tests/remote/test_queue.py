"""Bounded priority queue."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from atomr_infer_core import Priority
from atomr_infer_core.errors import CapacityExhaustedError
from atomr_infer_remote import BoundedPriorityQueue, PriorityHeap


class Item:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_higher_priority_first_then_fifo() -> None:
    q: BoundedPriorityQueue[str] = BoundedPriorityQueue(10)
    for item, prio in [
        ("n0", Priority.NORMAL),
        ("n1", Priority.NORMAL),
        ("h0", Priority.HIGH),
        ("b0", Priority.BACKGROUND),
        ("c0", Priority.CRITICAL),
        ("h1", Priority.HIGH),
    ]:
        q.put_nowait(item, prio)
    assert [q.get_nowait() for _ in range(6)] == ["c0", "h0", "h1", "n0", "n1", "b0"]
    with pytest.raises(trio.WouldBlock):
        q.get_nowait()


def test_full_queue_rejects_with_capacity_exhausted() -> None:
    q: BoundedPriorityQueue[str] = BoundedPriorityQueue(1)
    q.put_nowait("a", Priority.NORMAL)
    with pytest.raises(CapacityExhaustedError, match="queue is full"):
        q.put_nowait("b", Priority.CRITICAL)
    stats = q.statistics()
    assert (stats.size, stats.put, stats.rejected) == (1, 1, 1)
    assert stats.by_priority == (0, 1, 0, 0)


def test_zero_sized_queue_rejects_everything() -> None:
    with pytest.raises(CapacityExhaustedError):
        BoundedPriorityQueue[str](0).put_nowait("a", Priority.CRITICAL)


def test_remove_frees_the_slot_and_skips_the_item() -> None:
    q: BoundedPriorityQueue[Item] = BoundedPriorityQueue(2)
    a, b, c = Item("a"), Item("b"), Item("c")
    q.put_nowait(a, Priority.HIGH)
    q.put_nowait(b, Priority.NORMAL)
    assert q.remove(a)
    assert not q.remove(a)
    assert len(q) == 1
    q.put_nowait(c, Priority.NORMAL)
    assert [q.get_nowait(), q.get_nowait()] == [b, c]


def test_same_object_twice_is_refused() -> None:
    q: BoundedPriorityQueue[Item] = BoundedPriorityQueue(5)
    a = Item("a")
    q.put_nowait(a, Priority.NORMAL)
    with pytest.raises(ValueError, match="already queued"):
        q.put_nowait(a, Priority.HIGH)


async def test_get_waits_for_a_put(autojump_clock: trio.testing.MockClock) -> None:
    q: BoundedPriorityQueue[str] = BoundedPriorityQueue(4)
    got: list[tuple[str, float]] = []
    t0 = trio.current_time()

    async def getter() -> None:
        got.append((await q.get(), trio.current_time() - t0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        nursery.start_soon(getter)
        await trio.sleep(2)
        assert q.statistics().waiting_getters == 2
        q.put_nowait("x", Priority.NORMAL)
        await trio.sleep(1)
        q.put_nowait("y", Priority.NORMAL)
    assert got == [("x", 2.0), ("y", 3.0)]


async def test_cancelled_get_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    q: BoundedPriorityQueue[str] = BoundedPriorityQueue(4)
    with trio.move_on_after(1):
        await q.get()
    q.put_nowait("kept", Priority.NORMAL)
    assert await q.get() == "kept"


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.sampled_from(list(Priority))),
            st.tuples(st.just("pop"), st.none()),
            st.tuples(st.just("remove"), st.integers(0, 50)),
        ),
        max_size=80,
    )
)
def test_heap_matches_a_sorted_model(ops: list[tuple[str, object]]) -> None:
    heap: PriorityHeap[Item] = PriorityHeap()
    model: list[tuple[int, int, Item]] = []
    seq = 0
    for op, arg in ops:
        if op == "put":
            item = Item(str(seq))
            heap.push(item, arg)  # type: ignore[arg-type]
            model.append((-int(arg), seq, item))  # type: ignore[call-overload]
            seq += 1
        elif op == "pop":
            if model:
                model.sort(key=lambda e: (e[0], e[1]))
                assert heap.pop() is model.pop(0)[2]
            else:
                with pytest.raises(IndexError):
                    heap.pop()
        elif model:
            victim = model.pop(int(arg) % len(model))  # type: ignore[call-overload]
            assert heap.remove(victim[2])
        assert len(heap) == len(model)
        assert sum(heap.counts) == len(model)
