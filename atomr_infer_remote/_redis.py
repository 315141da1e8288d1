"""The Redis state backend: limits, spend and breakers shared by every process.

``state.backend = "redis"`` (strict mode): each acquire, release, reserve and settle is
one atomic Lua script (``_redis_scripts``) on a real Redis or Valkey server, so the
limits of a deployment hold across its replicas, the workers of one machine and every
gateway that shares the server.

- Rate limits: RPM and TPM are rolling windows on the server's clock; concurrency slots
  carry their owner (this process) and an expiry: a process renews the leases of the
  slots it holds every ``lease / 3``, so a process killed with -9 gives its slots back
  within ``lease``. A release settles the permit's own entry, by id.
- Spend: reserve the worst case, then settle the reservation's own entry.
- Breakers: each process runs its own breaker; when one opens, its open-until time is
  published and every process reads the published times every ``sync_interval``, so a
  breaker opened by one process is open in all of them within that interval.
- ``on_unavailable``: when the server cannot be reached within ``_CALL_TIMEOUT``,
  ``fail_closed`` refuses with ``StateUnavailableError`` (503 ``state_unavailable``);
  ``fail_open`` falls back to this process's own limits. Both log (once per outage)
  and count (``statistics().unavailable``); the next call that reaches the server ends
  the outage.

Releases and pauses are synchronous for the callers (a ``finally`` cannot wait on the
network): they are queued to a task in the backend's nursery, which runs them in order.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from atomr_infer_core import CircuitBreakerConfig, RateLimits, StateConfig, UnavailablePolicy
from atomr_infer_core.errors import ConfigError, RateLimitedError, StateUnavailableError

from . import _redis_scripts as scripts
from ._breaker import CircuitBreaker
from ._limiter import WINDOW_S, RateLimiter, RateLimiterStatistics, check_fits
from ._state import MemorySpendWindow

__all__ = [
    "COST_HISTORY_S",
    "RedisPermit",
    "RedisRateLimiter",
    "RedisSpendWindow",
    "RedisStateBackend",
    "read_costs",
]

log = logging.getLogger("atomr_infer.state")

#: how long the hourly spend of a deployment is kept for ``cost-report``
COST_HISTORY_S = 90 * 86400
#: longest wait for one script before the server counts as unavailable
_CALL_TIMEOUT = 2.0
#: tasks running queued releases and refunds (one would fall behind a busy gateway,
#: and a release that waits keeps its slot taken)
_WORKERS = 4
#: how often a waiter re-asks when only a concurrency slot is missing (another
#: process's release cannot wake it)
_SLOT_POLL = 0.05


@attrs.define
class BackendStatistics:
    """What the shared backend did: ``unavailable`` counts calls that failed."""

    scope: str
    calls: int = 0
    unavailable: int = 0
    fail_open_grants: int = 0
    available: bool = True


class RedisStateBackend:
    """Limiters, breakers and spend windows in Redis (see the module docs).

    Build it with :func:`open_redis_state`; the same key gives the same object.
    """

    scope = "fleet"

    def __init__(self, client: Any, config: StateConfig, nursery: trio.Nursery) -> None:
        self._client = client
        self.config = config
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._prefix = config.key_prefix
        self._policy = UnavailablePolicy(config.on_unavailable)
        self._nursery = nursery
        self._scripts = {
            name: client.register_script(getattr(scripts, name)) for name in scripts.__all__
        }
        self._limiters: dict[str, RedisRateLimiter] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._breaker_keys: dict[str, str] = {}
        self._windows: dict[str, RedisSpendWindow] = {}
        self._send, self._receive = trio.open_memory_channel[tuple[str, list[str], list[Any]]](
            math.inf
        )
        self.stats = BackendStatistics(scope="fleet")
        self._seq = 0
        self._pending = 0
        self._drained = trio.Event()
        #: the breaker being opened from the published state (not to publish it back)
        self._syncing: str | None = None

    # -- the StateBackend protocol ----------------------------------------------------

    def limiter(self, key: str, limits: RateLimits, *, name: str | None = None) -> RateLimiter:
        found = self._limiters.get(key)
        if found is None:
            found = self._limiters[key] = RedisRateLimiter(self, key, limits, name=name or key)
        elif found.limits != limits:
            raise ConfigError([(key, f"rate limiter already exists with {found.limits}")])
        return found  # type: ignore[return-value]

    def breaker(
        self,
        key: str,
        config: CircuitBreakerConfig,
        *,
        provider: str = "custom",
        name: str | None = None,
    ) -> CircuitBreaker:
        found = self._breakers.get(key)
        if found is None:
            found = CircuitBreaker(config, name=name or key, provider=provider)
            self._breakers[key] = found
            self._breaker_keys[key] = self.key(key, "open_until")
            found.on_transition.append(functools.partial(self._on_breaker_transition, key))
        elif found.config != config:
            raise ConfigError([(key, f"circuit breaker already exists with {found.config}")])
        return found

    def window(self, key: str) -> RedisSpendWindow:
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = RedisSpendWindow(self, key)
        return found

    def record_cost(self, deployment: str, at: float, amount: float) -> None:
        """Add to the deployment's spend of the hour holding ``at`` (``cost-report``)."""
        hour_end = (math.floor(at / 3600.0) + 1) * 3600
        args = [hour_end, repr(amount), COST_HISTORY_S]
        self.submit("COST_RECORD", [self.key("cost", deployment)], args)

    def record_tenant_cost(self, tenant: str, at: float, amount: float) -> None:
        """Add to tenant (``[[key]]``) ``tenant``'s spend of the hour holding ``at``."""
        hour_end = (math.floor(at / 3600.0) + 1) * 3600
        args = [hour_end, repr(amount), COST_HISTORY_S]
        self.submit("COST_RECORD", [self.key("tenant-cost", tenant)], args)

    def put_value(self, name: str, value: str, ttl_s: float) -> None:
        """Store ``value`` under ``name`` for the fleet for ``ttl_s`` seconds (queued: the
        caller does not wait; a value lost to an outage is only missing, never wrong)."""
        self.submit("KV_PUT", [self.key("kv", name)], [value, max(1, int(ttl_s * 1000))])

    async def get_value(self, name: str) -> tuple[str, float] | None:
        """The value under ``name`` and its seconds left, or ``None`` when there is none.

        Raises StateUnavailableError when the server cannot be reached.
        """
        reply = await self.call("KV_GET", [self.key("kv", name)], [])
        if not reply:
            return None
        value, ttl_ms = reply
        text = value.decode() if isinstance(value, bytes) else str(value)
        ttl = ttl_ms.decode() if isinstance(ttl_ms, bytes) else str(ttl_ms)
        return text, max(0.0, float(ttl) / 1000)

    # -- plumbing ----------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def new_id(self) -> str:
        self._seq += 1
        return f"{self.owner}:{self._seq}"

    @property
    def fail_open(self) -> bool:
        return self._policy is UnavailablePolicy.FAIL_OPEN

    async def call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script; raises StateUnavailableError when the server is unreachable."""
        self.stats.calls += 1
        unreachable: tuple[type[BaseException], ...] = (
            OSError,
            trio.TooSlowError,
            *_redis_errors(),
        )
        try:
            with trio.fail_after(_CALL_TIMEOUT):
                result = await self._scripts[script](keys=keys, args=[str(a) for a in args])
        except unreachable as exc:
            self._unavailable(exc)
            raise StateUnavailableError(
                "the shared state backend (redis) cannot be reached, so limits and budgets "
                "cannot be checked (state.on_unavailable = fail_closed); retry shortly, or "
                'set on_unavailable = "fail_open" to serve on local limits meanwhile',
                retry_after_s=1.0,
            ) from None
        if not self.stats.available:
            self.stats.available = True
            log.warning("state backend: redis is reachable again; fleet-wide limits resume")
        return result

    def _unavailable(self, exc: BaseException) -> None:
        self.stats.unavailable += 1
        if self.stats.available:
            self.stats.available = False
            action = "serving on local limits" if self.fail_open else "refusing requests (503)"
            log.error(
                "state backend: redis unreachable (%s); %s until it is back (on_unavailable = %s)",
                type(exc).__name__,
                action,
                self._policy.value,
            )

    def submit(self, script: str, keys: list[str], args: list[Any]) -> None:
        """Queue a script for the backend's worker (releases, refunds, pauses: callers
        never wait for them; each only ever frees capacity late, never too early)."""
        self._pending += 1
        self._send.send_nowait((script, keys, args))

    async def settled(self) -> None:
        """Return once every queued script ran (tests; a drain)."""
        while self._pending:
            await self._drained.wait()

    async def _worker(self) -> None:
        async for script, keys, args in self._receive:
            try:
                await self.call(script, keys, args)
            except StateUnavailableError:
                pass  # the lease (slots) or the window (tokens, spend) bounds what is lost
            finally:
                self._pending -= 1
                if not self._pending:
                    self._drained.set()
                    self._drained = trio.Event()
            if script == "LIMITER_RELEASE":
                for limiter in self._limiters.values():
                    limiter.wake()

    async def _renew_leases(self) -> None:
        every = self.config.lease / 3
        while True:
            await trio.sleep(every)
            for limiter in list(self._limiters.values()):
                held = limiter.held_ids()
                if held:
                    try:
                        await self.call(
                            "LIMITER_RENEW", [limiter.keys[4]], [self.config.lease, *held]
                        )
                    except StateUnavailableError:
                        pass

    async def _sync_pauses(self) -> None:
        """Unlimited limiters make no round trip: give them the fleet's 429 pauses."""
        unlimited = [lim for lim in self._limiters.values() if lim.limits.unlimited]
        if not unlimited:
            return
        try:
            left = await self.call("BREAKER_READ", [lim.keys[5] for lim in unlimited], [])
        except StateUnavailableError:
            return
        now = trio.current_time()
        for limiter, remaining in zip(unlimited, left, strict=True):
            if float(remaining) > 0:
                limiter._local.pause_until(now + float(remaining))

    async def _sync_breakers(self) -> None:
        while True:
            await trio.sleep(self.config.sync_interval)
            await self._sync_pauses()
            if not self._breakers:
                continue
            names = list(self._breakers)
            try:
                left = await self.call("BREAKER_READ", [self._breaker_keys[n] for n in names], [])
            except StateUnavailableError:
                continue
            for name, remaining in zip(names, left, strict=True):
                seconds = float(remaining)
                breaker = self._breakers[name]
                if seconds > 0 and breaker.state == "closed":
                    self._syncing = name
                    try:
                        breaker.force_open(seconds)
                    finally:
                        self._syncing = None

    def _on_breaker_transition(self, key: str, _name: str, _old: str, new: str) -> None:
        self._breaker_moved(key, new)

    def _breaker_moved(self, key: str, new: str) -> None:
        if new != "open" or self._syncing == key:
            return
        breaker = self._breakers[key]
        retry_at = breaker.statistics().retry_at
        if retry_at is not None:
            seconds = max(0.001, retry_at - time.time())
            self.submit("BREAKER_OPEN", [self._breaker_keys[key]], [seconds])

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(_WORKERS):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._renew_leases)
            nursery.start_soon(self._sync_breakers)


def _redis_errors() -> tuple[type[BaseException], ...]:
    """What counts as "unreachable": no connection, still loading, a read-only replica."""
    from coredis.exceptions import ConnectionError as RedisConnectionError, ReadOnlyError

    return (RedisConnectionError, ReadOnlyError)


class RedisPermit:
    """One granted request; ``release`` it exactly once (sync: queued to the backend)."""

    __slots__ = ("_limiter", "_released", "granted_at", "id", "local", "requests", "tokens")

    def __init__(
        self, limiter: RedisRateLimiter, id: str, requests: int, tokens: int, granted_at: float
    ) -> None:
        self._limiter = limiter
        self.id = id
        self.requests = requests
        self.tokens = tokens
        self.granted_at = granted_at
        self._released = False
        self.local: Any = None  # the local permit granted under fail_open

    def release(self, actual_tokens: int | None = None) -> None:
        if self._released:
            return
        self._released = True
        self._limiter._release(self, actual_tokens)

    def __enter__(self) -> RedisPermit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RedisPermit(requests={self.requests}, tokens={self.tokens})"


class RedisRateLimiter:
    """A deployment's RPM, TPM, concurrency and 429 pause, held in Redis.

    Same surface as :class:`RateLimiter`. Waiting polls the server (a release in this
    process wakes local waiters at once); fairness is FIFO only within this process.
    """

    def __init__(self, backend: RedisStateBackend, key: str, limits: RateLimits, *, name: str):
        self._backend = backend
        self.limits = limits
        self.name = name
        k = backend.key
        self.keys = [
            k(key, "rpm"),
            k(key, "rpm:n"),
            k(key, "tpm"),
            k(key, "tpm:n"),
            k(key, "slots"),
            k(key, "pause"),
        ]
        self._local = RateLimiter(limits, name=name)  # fail_open, and sizing checks
        self._held: dict[str, RedisPermit] = {}
        self._queue: deque[trio.Event] = deque()
        self._changed = trio.Event()
        self._granted = 0
        self._rejected = 0
        self._left: tuple[float | None, float | None] = (None, None)

    def _limit(self, value: int | None) -> int:
        return -1 if value is None else value

    async def acquire(
        self,
        *,
        requests: int = 1,
        tokens: int = 0,
        deadline: float | None = None,
        wait: bool = True,
    ) -> RedisPermit:
        """A fleet-wide permit (see :meth:`RateLimiter.acquire` for the contract).

        Waiters of this process queue FIFO and only the head asks the server again
        (when a release here wakes it, or every ``_SLOT_POLL`` for releases elsewhere),
        so a busy limiter costs one poller per process, not one per waiter.
        """
        check_fits(self.limits, self.name, requests, tokens)
        if self.limits.unlimited:
            # nothing to count: no round trip; a 429 pause (this process's, or another's
            # read every sync_interval) still holds through the local limiter
            local = await self._local.acquire(
                requests=requests, tokens=tokens, deadline=deadline, wait=wait
            )
            permit = RedisPermit(self, "", requests, tokens, trio.current_time())
            permit.local = local
            self._granted += 1
            return permit
        if not wait or not self._queue:
            got = await self._try(requests, tokens, deadline, wait)
            if isinstance(got, RedisPermit):
                return got
            await self._wait(got, deadline, wait)  # raises unless we may wait
        me = trio.Event()
        self._queue.append(me)
        try:
            if self._queue[0] is not me:
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await me.wait()
                if self._queue[0] is not me:
                    self._rejected += 1
                    raise RateLimitedError(
                        f"rate limit of {self.name!r} (fleet-wide): its deadline passed while "
                        "queued",
                        provider=None,
                        retry_after_s=None,
                    )
            while True:
                got = await self._try(requests, tokens, deadline, wait)
                if isinstance(got, RedisPermit):
                    return got
                await self._wait(got, deadline, wait)
        finally:
            was_head = self._queue[0] is me
            self._queue.remove(me)
            if was_head and self._queue:
                self._queue[0].set()

    async def _try(
        self, requests: int, tokens: int, deadline: float | None, wait: bool
    ) -> RedisPermit | float:
        """One acquire script: the permit, or the wait it asked for (-1: a slot)."""
        permit_id = self._backend.new_id()
        try:
            reply = await self._backend.call(
                "LIMITER_ACQUIRE",
                self.keys,
                [
                    self._limit(self.limits.requests_per_minute),
                    self._limit(self.limits.tokens_per_minute),
                    self._limit(self.limits.concurrent_requests),
                    requests,
                    tokens,
                    permit_id,
                    self._backend.config.lease,
                    WINDOW_S,
                ],
            )
        except StateUnavailableError:
            if not self._backend.fail_open:
                raise
            return await self._acquire_locally(requests, tokens, deadline, wait)
        if int(reply[0]) == 1:
            return self._grant(permit_id, requests, tokens, reply)
        return float(reply[1])

    async def _acquire_locally(
        self, requests: int, tokens: int, deadline: float | None, wait: bool
    ) -> RedisPermit:
        local = await self._local.acquire(
            requests=requests, tokens=tokens, deadline=deadline, wait=wait
        )
        self._backend.stats.fail_open_grants += 1
        permit = RedisPermit(self, "", requests, tokens, trio.current_time())
        permit.local = local
        self._granted += 1
        return permit

    def _grant(self, permit_id: str, requests: int, tokens: int, reply: list[Any]) -> RedisPermit:
        permit = RedisPermit(self, permit_id, requests, tokens, trio.current_time())
        if requests:
            self._held[permit_id] = permit
        self._granted += 1
        rpm_left, tpm_left = float(reply[2]), float(reply[3])
        self._left = (None if rpm_left < 0 else rpm_left, None if tpm_left < 0 else tpm_left)
        return permit

    async def _wait(self, wait_s: float, deadline: float | None, wait: bool) -> None:
        now = trio.current_time()
        known = wait_s if wait_s >= 0 else None
        if not wait or (deadline is not None and known is not None and now + known > deadline):
            self._rejected += 1
            why = (
                "the limit is reached and the caller does not wait"
                if not wait
                else "the wait for capacity lies past the deadline"
            )
            hint = f"; capacity frees up in {known:.3g}s" if known is not None else ""
            raise RateLimitedError(
                f"rate limit of {self.name!r} (fleet-wide): {why}{hint}",
                provider=None,
                retry_after_s=known,
            )
        if deadline is not None and now >= deadline:
            self._rejected += 1
            raise RateLimitedError(
                f"rate limit of {self.name!r} (fleet-wide): the deadline passed while waiting",
                provider=None,
                retry_after_s=None,
            )
        wake = now + (known if known else _SLOT_POLL)
        changed = self._changed
        with trio.move_on_at(min(wake, math.inf if deadline is None else deadline)):
            await changed.wait()

    def wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def held_ids(self) -> list[str]:
        return list(self._held)

    def _release(self, permit: RedisPermit, actual_tokens: int | None) -> None:
        if permit.local is not None:
            permit.local.release(actual_tokens)
            return
        self._held.pop(permit.id, None)
        # without a TPM limit there is no token entry to correct
        actual = actual_tokens if self.limits.tokens_per_minute is not None else None
        self._backend.submit(
            "LIMITER_RELEASE",
            [self.keys[2], self.keys[3], self.keys[4]],
            [permit.id, permit.tokens, -1 if actual is None else actual, WINDOW_S],
        )

    def acquire_nowait(self, *, requests: int = 1, tokens: int = 0) -> RedisPermit:
        raise RuntimeError(
            "a fleet-wide limiter answers over the network: use `await limiter.acquire(wait=False)`"
        )

    def pause_until(self, t: float) -> None:
        """Admit nothing fleet-wide before ``t`` (trio clock): the upstream answered 429."""
        seconds = t - trio.current_time()
        if seconds > 0:
            self._backend.submit("LIMITER_PAUSE", [self.keys[5]], [seconds])
            self._local.pause_until(t)

    def statistics(self) -> RateLimiterStatistics:
        local = self._local.statistics()
        return RateLimiterStatistics(
            name=self.name,
            in_flight=len(self._held) + local.in_flight,
            waiting=len(self._queue),
            granted=self._granted,
            rejected=self._rejected,
            requests_available=self._left[0],
            tokens_available=self._left[1],
            paused_for_s=local.paused_for_s,
        )


class RedisSpendWindow:
    """A :class:`SpendWindow` in Redis: every method is one atomic script.

    A reservation's id is remembered by this process under its time, so settling it
    changes that entry only. Under ``fail_open`` a local window stands in while the
    server is unreachable; a settle that cannot reach the server leaves the worst case
    reserved (it expires with the window): it never fails the request.
    """

    def __init__(self, backend: RedisStateBackend, key: str) -> None:
        self._backend = backend
        self._keys = [backend.key(key), backend.key(key, "n")]
        self._mine: dict[float, list[str]] = {}
        self._local = MemorySpendWindow()
        self._window_s = 0.0

    async def _call(self, script: str, args: list[Any]) -> Any:
        return await self._backend.call(script, self._keys, args)

    async def reserve(self, amount: float, *, limit: float, window_s: float, now: float) -> bool:
        if amount < 0:
            raise ValueError(f"a reservation must be >= 0 (got {amount})")
        self._window_s = max(self._window_s, window_s)
        entry = self._backend.new_id()
        bound = -1 if math.isinf(limit) else limit
        try:
            reserved = await self._call(
                "SPEND_RESERVE", [repr(amount), repr(bound), window_s, repr(now), entry]
            )
        except StateUnavailableError:
            if not self._backend.fail_open:
                raise
            return await self._local.reserve(amount, limit=limit, window_s=window_s, now=now)
        if int(reserved) != 1:
            return False
        self._mine.setdefault(now, []).append(entry)
        return True

    async def adjust(self, delta: float, *, now: float, reserved_at: float) -> None:
        ids = self._mine.get(reserved_at)
        entry = ids.pop() if ids else ""
        if ids == []:
            del self._mine[reserved_at]
        if not entry:  # reserved locally under fail_open (or never reserved here)
            await self._local.adjust(delta, now=now, reserved_at=reserved_at)
            return
        if delta == 0:
            await trio.lowlevel.checkpoint()
            return
        args = [repr(delta), repr(now), self._window_s or 86400.0, entry, self._backend.new_id()]
        if delta < 0:  # a refund only frees room late, never too early: don't wait for it
            self._backend.submit("SPEND_ADJUST", self._keys, args)
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._call("SPEND_ADJUST", args)
        except StateUnavailableError:
            pass  # the reservation stays whole until the window drops it

    async def _read(self, window_s: float, now: float, amount: float, limit: float) -> Any:
        return await self._call("SPEND_TOTAL", [window_s, repr(now), repr(amount), repr(limit)])

    async def total(self, *, window_s: float, now: float) -> float:
        try:
            reply = await self._read(window_s, now, 0.0, 0.0)
        except StateUnavailableError:
            if not self._backend.fail_open:
                raise
            return await self._local.total(window_s=window_s, now=now)
        return float(reply[0])

    async def earliest_room(
        self, amount: float, *, limit: float, window_s: float, now: float
    ) -> float | None:
        try:
            reply = await self._read(window_s, now, amount, limit)
        except StateUnavailableError:
            if not self._backend.fail_open:
                raise
            return await self._local.earliest_room(amount, limit=limit, window_s=window_s, now=now)
        room = float(reply[1])
        return None if room < 0 else room


@asynccontextmanager
async def open_redis_state(
    config: StateConfig, *, client_factory: Callable[..., Any] | None = None
) -> AsyncIterator[RedisStateBackend]:
    """A :class:`RedisStateBackend` for the block; its tasks run in its own nursery.

    The server need not be up at start: requests then meet ``on_unavailable``.
    """
    import coredis

    assert config.url is not None  # the config converter requires it for redis
    url = config.url.reveal()
    client = (client_factory or coredis.Redis.from_url)(
        url,
        decode_responses=True,
        connect_timeout=_CALL_TIMEOUT,
        stream_timeout=_CALL_TIMEOUT,
        retry_policy=coredis.retry.NoRetryPolicy(),
    )
    async with client, trio.open_nursery() as nursery:
        backend = RedisStateBackend(client, config, nursery)
        nursery.start_soon(backend.run)
        try:
            yield backend
        finally:
            # queued releases and refunds go out before the connection closes (bounded:
            # a dead server cannot hold the shutdown up)
            with trio.CancelScope(shield=True), trio.move_on_after(2 * _CALL_TIMEOUT):
                await backend.settled()
            nursery.cancel_scope.cancel()


async def read_costs(
    backend: RedisStateBackend, deployments: list[str], *, kind: str = "cost"
) -> dict[str, dict[float, float]]:
    """Hourly spend per deployment: ``{name: {hour end: usd}}`` (``cost-report``);
    ``kind = "tenant-cost"``: per tenant, ``deployments`` then names tenants."""
    out: dict[str, dict[float, float]] = {}
    for name in deployments:
        raw = await backend._client.hgetall(backend.key(kind, name))
        out[name] = {float(hour): float(usd) for hour, usd in raw.items()}
    return out
