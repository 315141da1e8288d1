"""Weighted fair queueing of waiters by tenant: the pure core of a capacity queue.

Start-time fair queueing over whole requests (each costs 1): the head waiter of every
tenant's lane is tagged when it becomes head, with start ``S = max(V, F_t)`` and finish
``S + 1 / weight_t`` where ``F_t`` is the finish of the tenant's previous slot; the next
slot goes to the head with the smallest finish (ties: the lane that queued first), and
the virtual time ``V`` moves to its start. Tenants that keep waiting get slots in
proportion to their weights; a tenant that was idle starts level with the others
(``max(V, F_t)``: idle time is not banked credit), so a heavy tenant cannot starve a
light one. Within a tenant, waiters leave by priority,
then oldest first (``PriorityHeap``).

No trio, no clock: callers push, pop and remove, and decide what a pop means.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

from atomr_infer_core import Priority

from ._queue import PriorityHeap

__all__ = ["FairQueue"]

T = TypeVar("T")


class _Lane(Generic[T]):
    __slots__ = ("finish", "head_finish", "head_start", "heap", "order", "weight")

    def __init__(self, weight: float, order: int) -> None:
        self.heap: PriorityHeap[T] = PriorityHeap()
        self.weight = weight
        #: the finish tag of the tenant's last slot
        self.finish = 0.0
        #: the tags of the lane's head (fixed from the moment it became head)
        self.head_start = 0.0
        self.head_finish = 0.0
        self.order = order

    def tag_head(self, virtual: float) -> None:
        self.head_start = max(virtual, self.finish)
        self.head_finish = self.head_start + 1.0 / self.weight


class FairQueue(Generic[T]):
    """Waiters in one lane per tenant; :meth:`pop` picks the lane by weighted fairness.

    Items are distinct objects (removal goes by identity). ``tenant`` is any hashable
    (``None`` is the default tenant of requests without one); ``weight`` must be > 0 and
    the latest one given for a tenant counts. A lane is dropped once empty, so the state
    held is bounded by the waiters, not by every tenant ever seen.
    """

    def __init__(self) -> None:
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._where: dict[int, Hashable] = {}
        self._virtual = 0.0
        #: the finish tags of tenants whose lane emptied (so leaving and re-queueing at
        #: once does not reset a tenant's place); dropped once the virtual time passes them
        self._parked: dict[Hashable, float] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._where)

    def __bool__(self) -> bool:
        return bool(self._where)

    @property
    def tenants(self) -> int:
        """How many tenants have waiters."""
        return len(self._lanes)

    def waiting(self, tenant: Hashable) -> int:
        lane = self._lanes.get(tenant)
        return 0 if lane is None else len(lane.heap)

    def push(
        self, item: T, *, tenant: Hashable = None, weight: float = 1.0, priority: Priority
    ) -> None:
        if not weight > 0:
            raise ValueError(f"a tenant's weight must be > 0 (got {weight})")
        if id(item) in self._where:
            raise ValueError("this item is already queued")
        lane = self._lanes.get(tenant)
        if lane is None:
            lane = self._lanes[tenant] = _Lane(weight, next(self._order))
            lane.finish = self._parked.pop(tenant, 0.0)
            lane.tag_head(self._virtual)
        lane.weight = weight  # counts from the lane's next head on
        lane.heap.push(item, priority)
        self._where[id(item)] = tenant

    def pop(self) -> T:
        """The next waiter by weighted fairness; ``IndexError`` when empty."""
        if not self._lanes:
            raise IndexError("pop from an empty fair queue")
        tenant, lane = min(self._lanes.items(), key=lambda kv: (kv[1].head_finish, kv[1].order))
        lane.finish = lane.head_finish
        self._virtual = max(self._virtual, lane.head_start)
        item = lane.heap.pop()
        del self._where[id(item)]
        if lane.heap:
            lane.tag_head(self._virtual)
        else:
            self._retire(tenant, lane)
        return item

    def remove(self, item: T) -> bool:
        """Take ``item`` out (its request gave up); False when it is not queued."""
        tenant = self._where.pop(id(item), _MISSING)
        if tenant is _MISSING:
            return False
        lane = self._lanes[tenant]
        lane.heap.remove(item)
        if not lane.heap:
            self._retire(tenant, lane)
        return True

    def _retire(self, tenant: Hashable, lane: _Lane[T]) -> None:
        del self._lanes[tenant]
        if lane.finish > self._virtual:
            self._parked[tenant] = lane.finish
        # parked tags the virtual time has passed would be replaced by it anyway
        for name in [n for n, f in self._parked.items() if f <= self._virtual]:
            del self._parked[name]


_MISSING: Hashable = object()
