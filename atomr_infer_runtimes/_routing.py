"""Routing decisions, pure: which deployment a model name means, which replica serves.

No trio, no clocks: the cluster feeds these functions its live tables.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from atomr_infer_core import ExecuteBatch
from atomr_infer_core.errors import NotFoundError

__all__ = [
    "PrefixOwners",
    "cache_aware",
    "fallback_chain",
    "least_outstanding",
    "prefix_keys",
    "resolve_deployment",
]

#: a replica holding a request's prefix keeps it while it carries fewer than this many
#: requests beyond the least loaded replica; past that, least outstanding wins
AFFINITY_SLACK = 4
#: prompt prefixes remembered per deployment
PREFIX_OWNERS = 4096
#: a completion prompt's prefixes are taken every this many characters
PROMPT_CHUNK_CHARS = 256


def resolve_deployment(model: str, deployments: Mapping[str, str]) -> str:
    """The deployment name a request's ``model`` means.

    ``deployments`` maps deployment name → its ``model``. A deployment name wins; else
    the one deployment serving that model. Raises NotFoundError when none or several
    match (the message lists the names to use instead).
    """
    if model in deployments:
        return model
    matches = sorted(name for name, served in deployments.items() if served == model)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise NotFoundError(
            f"model {model!r} is served by several deployments ({', '.join(matches)}); "
            "send a deployment name as the model",
            model=model,
        )
    known = ", ".join(sorted(deployments)) or "none"
    raise NotFoundError(
        f"no deployment named {model!r} and none serves that model (deployments: {known})",
        model=model,
    )


def fallback_chain(first: str, fallbacks_of: Mapping[str, Sequence[str]]) -> list[str]:
    """``first`` then its fallbacks, depth first, each deployment once."""
    chain: list[str] = []

    def visit(name: str) -> None:
        if name in chain:
            return
        chain.append(name)
        for nxt in fallbacks_of.get(name, ()):
            visit(nxt)

    visit(first)
    return chain


def least_outstanding(
    candidates: Iterable[tuple[int, int]], *, after: int = -1, limit: int | None = None
) -> int | None:
    """The replica index with the fewest outstanding requests.

    ``candidates`` are ``(replica index, outstanding)`` of the replicas that may take
    work. Ties go round-robin: the first tied index greater than ``after`` (the last
    pick), wrapping around, so sequential traffic spreads evenly. Replicas at ``limit``
    outstanding are skipped. ``None`` when no replica qualifies.
    """
    pool = [(idx, n) for idx, n in candidates if limit is None or n < limit]
    if not pool:
        return None
    fewest = min(n for _, n in pool)
    tied = sorted(idx for idx, n in pool if n == fewest)
    for idx in tied:
        if idx > after:
            return idx
    return tied[0]


def prefix_keys(batch: ExecuteBatch) -> list[bytes]:
    """Keys of the prompt prefixes of ``batch``, shortest first.

    Chat: one key per leading run of messages (the system prompt; the conversation so
    far), so the next turn of a conversation shares every key of this one. Completion:
    one key per ``PROMPT_CHUNK_CHARS`` characters of the prompt, and the whole prompt.
    """
    digest = hashlib.blake2b(digest_size=12)
    keys: list[bytes] = []
    if batch.messages is not None:
        for message in batch.messages:
            digest.update(str(message.role).encode() + b"\x00" + message.text.encode() + b"\x01")
            keys.append(digest.copy().digest())
        return keys
    text = batch.prompt or ""
    for start in range(0, len(text), PROMPT_CHUNK_CHARS):
        digest.update(text[start : start + PROMPT_CHUNK_CHARS].encode())
        keys.append(digest.copy().digest())
    return keys


class PrefixOwners:
    """Which replica last served each prompt prefix (LRU, bounded)."""

    def __init__(self, capacity: int = PREFIX_OWNERS) -> None:
        self.capacity = capacity
        self._owner: OrderedDict[bytes, int] = OrderedDict()

    def owner(self, key: bytes) -> int | None:
        return self._owner.get(key)

    def record(self, keys: Sequence[bytes], replica: int) -> None:
        for key in keys:
            self._owner[key] = replica
            self._owner.move_to_end(key)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def forget(self, replica: int) -> None:
        """``replica`` restarted: its cache is gone."""
        for key in [k for k, v in self._owner.items() if v == replica]:
            del self._owner[key]


def cache_aware(
    candidates: Iterable[tuple[int, int]],
    keys: Sequence[bytes],
    owners: PrefixOwners,
    *,
    after: int = -1,
    slack: int = AFFINITY_SLACK,
) -> int | None:
    """The replica holding the longest of ``keys`` if its load is within ``slack`` of
    the least loaded replica's, else :func:`least_outstanding`."""
    pool = list(candidates)
    if not pool:
        return None
    load = dict(pool)
    fewest = min(load.values())
    for key in reversed(keys):
        idx = owners.owner(key)
        if idx is not None and idx in load and load[idx] - fewest < slack:
            return idx
    return least_outstanding(pool, after=after)
