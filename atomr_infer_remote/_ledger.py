"""The spend ledger: what the memory backend spent, kept in SQLite across restarts.

Spend is kept per key (a budget window such as ``budget:chat:hour``, or ``cost:chat``
for the cost report) in one-minute buckets. A bucket is stamped with the *end* of its
minute, so spend loaded after a restart leaves a rolling window no earlier than it
really would: a restart never makes room a budget did not have. Changes are buffered
and written by :meth:`SpendLedger.flush` (the backend flushes every second and on
close), so a process killed with -9 loses at most the last second of spend.
"""

from __future__ import annotations

import math
import sqlite3
from collections import defaultdict
from pathlib import Path

__all__ = ["BUCKET_S", "SpendLedger", "bucket_end"]

BUCKET_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    key TEXT NOT NULL,
    at REAL NOT NULL,          -- end of the minute the spend belongs to (unix seconds)
    amount REAL NOT NULL,
    PRIMARY KEY (key, at)
)
"""


def bucket_end(t: float) -> float:
    """The end of the one-minute bucket holding ``t``."""
    return (math.floor(t / BUCKET_S) + 1) * BUCKET_S


class SpendLedger:
    """A SQLite file of spend buckets; not thread-safe (one trio run)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._pending: defaultdict[tuple[str, float], float] = defaultdict(float)

    def record(self, key: str, at: float, amount: float) -> None:
        """Buffer ``amount`` (negative: a refund) for the bucket holding ``at``."""
        if amount:
            self._pending[(key, bucket_end(at))] += amount

    def flush(self) -> None:
        if not self._pending:
            return
        rows = [(k, at, amount) for (k, at), amount in self._pending.items()]
        self._pending.clear()
        with self._db:
            self._db.executemany(
                "INSERT INTO spend (key, at, amount) VALUES (?, ?, ?) "
                "ON CONFLICT (key, at) DO UPDATE SET amount = amount + excluded.amount",
                rows,
            )

    def load(self, key: str, since: float) -> list[tuple[float, float]]:
        """``(bucket end, amount)`` of ``key`` for buckets ending after ``since``."""
        cursor = self._db.execute(
            "SELECT at, amount FROM spend WHERE key = ? AND at > ? AND amount > 0 ORDER BY at",
            (key, since),
        )
        return [(float(at), float(amount)) for at, amount in cursor]

    def keys(self, prefix: str) -> list[str]:
        cursor = self._db.execute(
            "SELECT DISTINCT key FROM spend WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return [str(k) for (k,) in cursor]

    def prune(self, prefix: str, before: float) -> None:
        """Drop the buckets of keys starting with ``prefix`` that ended before ``before``."""
        with self._db:
            self._db.execute(
                "DELETE FROM spend WHERE substr(key, 1, ?) = ? AND at <= ?",
                (len(prefix), prefix, before),
            )

    def close(self) -> None:
        self.flush()
        self._db.close()
