"""A bounded priority queue: Background < Normal < High < Critical, FIFO within a level.

``PriorityHeap`` is the pure core (no trio); ``BoundedPriorityQueue`` adds waiting getters.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

import attrs
import trio

from atomr_infer_core import Priority
from atomr_infer_core.errors import CapacityExhaustedError

__all__ = ["BoundedPriorityQueue", "PriorityHeap", "QueueStatistics"]

T = TypeVar("T")


class PriorityHeap(Generic[T]):
    """Highest priority first, then oldest first; removal by identity in O(log n)."""

    def __init__(self) -> None:
        self._heap: list[list[object]] = []  # [-priority, seq, item, alive]
        self._entries: dict[int, list[object]] = {}
        self._seq = itertools.count()
        self.counts = [0] * len(Priority)

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, item: T, priority: Priority) -> None:
        if id(item) in self._entries:
            raise ValueError("this item is already queued")
        level = Priority(priority)
        entry: list[object] = [-int(level), next(self._seq), item, True]
        self._entries[id(item)] = entry
        self.counts[level] += 1
        heapq.heappush(self._heap, entry)

    def pop(self) -> T:
        """Remove and return the first item; ``IndexError`` when empty."""
        while self._heap:
            entry = heapq.heappop(self._heap)
            if entry[3]:
                self._forget(entry)
                return entry[2]  # type: ignore[return-value]
        raise IndexError("pop from an empty priority queue")

    def remove(self, item: T) -> bool:
        entry = self._entries.get(id(item))
        if entry is None or entry[2] is not item:
            return False
        entry[3] = False  # lazily dropped when it reaches the top
        self._forget(entry)
        return True

    def _forget(self, entry: list[object]) -> None:
        del self._entries[id(entry[2])]
        self.counts[-entry[0]] -= 1  # type: ignore[operator]


@attrs.frozen(kw_only=True)
class QueueStatistics:
    size: int
    maxsize: int
    #: queued items per level, indexed by ``Priority``
    by_priority: tuple[int, ...]
    waiting_getters: int
    put: int
    rejected: int


class BoundedPriorityQueue(Generic[T]):
    """At most ``maxsize`` items; ``put_nowait`` on a full queue raises at once.

    ``get`` waits; cancelling it loses nothing. Items are distinct objects (removal
    and duplicate detection go by identity).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0 (got {maxsize})")
        self.maxsize = maxsize
        self._heap: PriorityHeap[T] = PriorityHeap()
        self._lot = trio.lowlevel.ParkingLot()
        self._put = 0
        self._rejected = 0

    def __len__(self) -> int:
        return len(self._heap)

    def put_nowait(self, item: T, priority: Priority = Priority.NORMAL) -> None:
        """Queue ``item``; ``CapacityExhaustedError`` when the queue is full."""
        if len(self._heap) >= self.maxsize:
            self._rejected += 1
            raise CapacityExhaustedError(
                f"the request queue is full ({self.maxsize} waiting); retry shortly or raise "
                "serving.max_queued"
            )
        self._heap.push(item, priority)
        self._put += 1
        self._lot.unpark()

    def get_nowait(self) -> T:
        """The first item; ``trio.WouldBlock`` when empty."""
        if not self._heap:
            raise trio.WouldBlock
        return self._heap.pop()

    async def get(self) -> T:
        """Wait for and return the first item (highest priority, then oldest)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._heap:
            await self._lot.park()
        item = self._heap.pop()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def remove(self, item: T) -> bool:
        """Take ``item`` out (its request was cancelled); False when not queued."""
        return self._heap.remove(item)

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            size=len(self._heap),
            maxsize=self.maxsize,
            by_priority=tuple(self._heap.counts),
            waiting_getters=len(self._lot),
            put=self._put,
            rejected=self._rejected,
        )
