"""Cache-aware replica choice, pure: prompt-prefix keys and the owner table."""

from __future__ import annotations

from atomr_infer_core import ExecuteBatch, Message
from atomr_infer_runtimes._routing import PrefixOwners, cache_aware, prefix_keys


def _chat(*texts: str) -> ExecuteBatch:
    roles = ["system"] + ["user", "assistant"] * len(texts)
    return ExecuteBatch(
        request_id="r",
        model="m",
        messages=[Message(role=r, content=t) for r, t in zip(roles, texts, strict=False)],
    )


def test_the_next_turn_shares_every_key_of_the_conversation_so_far() -> None:
    turn1 = prefix_keys(_chat("sys", "hi"))
    turn2 = prefix_keys(_chat("sys", "hi", "hello!", "and now?"))
    assert turn2[: len(turn1)] == turn1
    assert prefix_keys(_chat("other", "hi"))[0] != turn1[0]


def test_completion_prompts_key_every_chunk() -> None:
    long = ExecuteBatch(request_id="r", model="m", kind="completion", prompt="x" * 600)
    longer = ExecuteBatch(request_id="r", model="m", kind="completion", prompt="x" * 700)
    a, b = prefix_keys(long), prefix_keys(longer)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]


def test_the_holder_wins_until_its_load_diverges() -> None:
    owners = PrefixOwners()
    keys = prefix_keys(_chat("sys", "hi"))
    owners.record(keys[:1], 1)
    assert cache_aware([(0, 0), (1, 3)], keys, owners) == 1
    assert cache_aware([(0, 0), (1, 4)], keys, owners) == 0  # 4 beyond the least loaded
    assert cache_aware([(0, 2)], keys, owners) == 0  # the holder is not serving
    assert cache_aware([], keys, owners) is None


def test_the_longest_held_prefix_wins() -> None:
    owners = PrefixOwners()
    keys = prefix_keys(_chat("sys", "hi", "hello", "more"))
    owners.record(keys[:1], 0)
    owners.record(keys[:3], 1)
    owners.record(keys[:1], 0)
    assert cache_aware([(0, 0), (1, 0)], keys, owners) == 1


def test_owners_are_bounded_and_forget_a_restarted_replica() -> None:
    owners = PrefixOwners(capacity=2)
    a, b, c = (prefix_keys(_chat(t))[0] for t in "abc")
    owners.record([a], 0)
    owners.record([b], 1)
    owners.record([c], 1)
    assert owners.owner(a) is None and owners.owner(c) == 1
    owners.forget(1)
    assert owners.owner(b) is None and owners.owner(c) is None
