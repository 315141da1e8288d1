"""``python -m atomr_infer cost-report``: spend per deployment and per tenant per hour or day.

Reads what the gateway recorded: the memory backend's ``state.spend_ledger`` (SQLite) or
the Redis server of ``backend = "redis"``. Periods are UTC; each row is the spend
settled in that period (real usage times the runtime's price table). Tenants
(``[[key]]``) get a second table: the same spend, by the key's name (never the key).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["cost_report", "format_report"]

_PERIOD = {"hour": 3600, "day": 86400}


def _fold(buckets: Mapping[float, float], by: str) -> dict[float, float]:
    """Buckets stamped with their *end* into periods keyed by their start."""
    size = _PERIOD[by]
    out: defaultdict[float, float] = defaultdict(float)
    for end, usd in buckets.items():
        out[((end - 1) // size) * size] += usd
    return dict(out)


def format_report(
    costs: Mapping[str, Mapping[float, float]],
    by: str,
    tenants: Mapping[str, Mapping[float, float]] | None = None,
) -> str:
    """The table ``cost-report`` prints (``costs``: deployment → bucket end → USD), then
    the tenants' table when ``tenants`` (tenant → bucket end → USD) is given."""
    text = _table("deployment", costs, by)
    if tenants is not None:
        text += "\n\n" + _table("tenant", tenants, by)
    return text


def _table(column: str, costs: Mapping[str, Mapping[float, float]], by: str) -> str:
    stamp = "%Y-%m-%d %H:00" if by == "hour" else "%Y-%m-%d"
    lines = [f"{column:<24} {by:<17} {'spend (USD)':>14}"]
    total = 0.0
    for name in sorted(costs):
        for start, usd in sorted(_fold(costs[name], by).items()):
            if abs(usd) < 5e-13:
                continue
            lines.append(f"{name:<24} {time.strftime(stamp, time.gmtime(start)):<17} {usd:>14.6f}")
            total += usd
    if len(lines) == 1:
        lines.append("(no spend recorded)")
    lines.append(f"{'total':<42} {total:>14.6f}")
    return "\n".join(lines)


Costs = dict[str, dict[float, float]]


def _ledger_costs(path: str, prefix: str = "cost:") -> Costs:
    from atomr_infer_remote._ledger import SpendLedger

    ledger = SpendLedger(path)
    try:
        return {
            key.removeprefix(prefix): dict(ledger.load(key, since=0.0))
            for key in ledger.keys(prefix)
        }
    finally:
        ledger.close()


async def _redis_costs(config: Any) -> tuple[Costs, Costs]:
    from atomr_infer_remote._redis import open_redis_state, read_costs

    async with open_redis_state(config.state) as backend:
        costs = await read_costs(backend, [d.name for d in config.deployments])
        tenants = await read_costs(backend, [k.name for k in config.keys], kind="tenant-cost")
        return costs, tenants


def cost_report(path: str, by: str) -> int:
    """Print the report for the config file at ``path``; 1 with a message on failure."""
    import trio

    from atomr_infer_core import ConfigError, StateBackendKind
    from atomr_infer_core.config import load_config
    from atomr_infer_core.errors import StateUnavailableError

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid\n{exc}", file=sys.stderr)
        return 1
    if config.state.backend is StateBackendKind.REDIS:
        try:
            costs, tenants = trio.run(_redis_costs, config)
        except (StateUnavailableError, OSError) as exc:
            print(f"cannot read spend from redis: {exc}", file=sys.stderr)
            return 1
    elif config.state.spend_ledger:
        if not Path(config.state.spend_ledger).exists():
            print(
                f"{path}: no spend recorded yet: the ledger {config.state.spend_ledger} "
                "does not exist (the gateway writes it while it serves)",
                file=sys.stderr,
            )
            return 1
        costs = _ledger_costs(config.state.spend_ledger)
        tenants = _ledger_costs(config.state.spend_ledger, "tenant-cost:")
    else:
        print(
            f'{path}: spend is not recorded: [state] spend_ledger = "" keeps it in memory '
            'only; remove that line (default ledger) or set:\n  spend_ledger = "spend.sqlite"',
            file=sys.stderr,
        )
        return 1
    print(format_report(costs, by, tenants if config.keys or tenants else None))
    return 0
