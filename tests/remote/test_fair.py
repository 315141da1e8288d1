"""FairQueue: slots in proportion to weight between backlogged tenants; priority within one."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from atomr_infer_core import Priority
from atomr_infer_remote import FairQueue


class Item:
    def __init__(self, tenant: object, n: int = 0) -> None:
        self.tenant = tenant
        self.n = n

    def __repr__(self) -> str:
        return f"Item({self.tenant!r}, {self.n})"


def _saturate(queue: FairQueue[Item], weights: dict[object, float], pops: int) -> Counter[object]:
    """Every tenant keeps one more waiter queued than it needs; count who is served."""
    for tenant, weight in weights.items():
        for _ in range(pops):
            queue.push(Item(tenant), tenant=tenant, weight=weight, priority=Priority.NORMAL)
    return Counter(queue.pop().tenant for _ in range(pops))


def test_backlogged_tenants_share_in_proportion_to_weight() -> None:
    served = _saturate(FairQueue(), {"light": 1.0, "heavy": 3.0}, 400)
    assert served == {"light": 100, "heavy": 300}


def test_the_order_interleaves_instead_of_serving_one_tenant_in_bursts() -> None:
    queue: FairQueue[Item] = FairQueue()
    for tenant, weight in (("a", 1.0), ("b", 3.0)):
        for _ in range(8):
            queue.push(Item(tenant), tenant=tenant, weight=weight, priority=Priority.NORMAL)
    order = "".join(str(queue.pop().tenant) for _ in range(8))
    assert order.count("a") == 2
    # never more than the 3 slots of "b" (plus one where float ties fall its way) in a row
    assert "bbbbb" not in order


def test_an_idle_tenant_banks_no_credit() -> None:
    queue: FairQueue[Item] = FairQueue()
    # "a" is served alone for a long while
    for _ in range(50):
        queue.push(Item("a"), tenant="a", priority=Priority.NORMAL)
        queue.pop()
    for tenant in ("a", "b"):
        for _ in range(10):
            queue.push(Item(tenant), tenant=tenant, priority=Priority.NORMAL)
    first_ten = Counter(queue.pop().tenant for _ in range(10))
    # "b" was idle: it gets its equal share from now on, not 50 slots of catching up
    assert first_ten == {"a": 5, "b": 5}


def test_priority_then_fifo_within_a_tenant() -> None:
    queue: FairQueue[Item] = FairQueue()
    items = [Item("a", i) for i in range(4)]
    levels = [Priority.NORMAL, Priority.HIGH, Priority.NORMAL, Priority.HIGH]
    for item, level in zip(items, levels, strict=True):
        queue.push(item, tenant="a", priority=level)
    assert [queue.pop().n for _ in range(4)] == [1, 3, 0, 2]


def test_one_tenant_alone_is_plain_priority_then_fifo() -> None:
    queue: FairQueue[Item] = FairQueue()
    items = [Item(None, i) for i in range(3)]
    queue.push(items[0], priority=Priority.BACKGROUND)
    queue.push(items[1], priority=Priority.NORMAL)
    queue.push(items[2], priority=Priority.NORMAL)
    assert [queue.pop().n for _ in range(3)] == [1, 2, 0]


def test_remove_takes_a_waiter_out_and_drops_its_empty_lane() -> None:
    queue: FairQueue[Item] = FairQueue()
    a, b = Item("a"), Item("b")
    queue.push(a, tenant="a", priority=Priority.NORMAL)
    queue.push(b, tenant="b", priority=Priority.NORMAL)
    assert queue.remove(a)
    assert not queue.remove(a)
    assert (len(queue), queue.tenants, queue.waiting("a")) == (1, 1, 0)
    assert queue.pop() is b
    assert not queue
    with pytest.raises(IndexError):
        queue.pop()


def test_a_weight_must_be_positive_and_an_item_queued_once() -> None:
    queue: FairQueue[Item] = FairQueue()
    item = Item("a")
    with pytest.raises(ValueError, match="weight"):
        queue.push(item, tenant="a", weight=0.0, priority=Priority.NORMAL)
    queue.push(item, tenant="a", priority=Priority.NORMAL)
    with pytest.raises(ValueError, match="already queued"):
        queue.push(item, tenant="a", priority=Priority.NORMAL)


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=8), min_size=2, max_size=5),
    pops=st.integers(min_value=20, max_value=200),
)
def test_backlogged_tenants_meet_the_start_time_fair_queueing_bound(
    weights: list[int], pops: int
) -> None:
    """Any two backlogged tenants: |served_i / w_i - served_j / w_j| <= 1/w_i + 1/w_j."""
    named = {f"t{i}": float(w) for i, w in enumerate(weights)}
    served = _saturate(FairQueue(), named, pops)
    for i, wi in named.items():
        for j, wj in named.items():
            gap = abs(served[i] / wi - served[j] / wj)
            assert gap <= 1 / wi + 1 / wj + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["push", "pop", "remove"]), st.sampled_from("abc")),
        max_size=200,
    )
)
def test_every_waiter_leaves_exactly_once(ops: list[tuple[str, str]]) -> None:
    """Arbitrary pushes, pops and removals: nothing is lost or duplicated."""
    queue: FairQueue[Item] = FairQueue()
    inside: list[Item] = []
    weights = {"a": 1.0, "b": 2.5, "c": 7.0}
    for n, (op, tenant) in enumerate(ops):
        if op == "push":
            item = Item(tenant, n)
            queue.push(item, tenant=tenant, weight=weights[tenant], priority=Priority.NORMAL)
            inside.append(item)
        elif op == "pop" and inside:
            inside.remove(queue.pop())
        elif op == "remove":
            mine = [i for i in inside if i.tenant == tenant]
            if mine:
                assert queue.remove(mine[0])
                inside.remove(mine[0])
        assert len(queue) == len(inside)
        assert queue.tenants == len({i.tenant for i in inside})
    while inside:
        inside.remove(queue.pop())
    assert not queue


def test_a_light_tenant_arriving_behind_a_long_heavy_backlog_is_served_next() -> None:
    queue: FairQueue[Item] = FairQueue()
    for i in range(100):
        queue.push(Item("heavy", i), tenant="heavy", weight=10.0, priority=Priority.NORMAL)
    for _ in range(30):
        queue.pop()
    light = Item("light")
    queue.push(light, tenant="light", weight=1.0, priority=Priority.NORMAL)
    # a weight of 1 against 10: within the next 11 slots, not after the 70 queued before it
    assert light in [queue.pop() for _ in range(11)]
