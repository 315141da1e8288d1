"""A one_for_one supervisor built on a trio nursery.

Each child is a long-running function started like ``nursery.start(fn)``. When a child
raises, only that child restarts (one_for_one), after an exponential backoff. Past its
restart intensity (``max_restarts`` within ``period`` seconds) the child is marked
``failed`` and the failure escalates: the supervisor's ``on_escalate`` callback decides
what the parent does (the deployment supervisor marks the deployment failed; other
deployments keep serving). Every child has a name and a visible state.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

__all__ = ["ChildState", "RestartPolicy", "SupervisedChild", "Supervisor", "describe_crash"]

log = logging.getLogger("atomr_infer.supervisor")


def root_cause(exc: BaseException) -> BaseException:
    """The first leaf of ``exc`` that is not a cancellation (``exc`` itself if none).

    A child's error usually arrives wrapped in a nursery's ExceptionGroup, whose own
    message ("Exceptions from Trio nursery") says nothing about what went wrong.
    """
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            cause = root_cause(inner)
            if not isinstance(cause, trio.Cancelled | BaseExceptionGroup):
                return cause
    return exc


def describe_crash(exc: BaseException) -> str:
    """``Type: message`` of the root cause of a crash, for logs and errors."""
    cause = root_cause(exc)
    return f"{type(cause).__name__}: {cause}"


class ChildState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """How a child is restarted: backoff, and the intensity past which it fails.

    The defaults are the original's: at most 3 restarts within 60 s.
    """

    max_restarts: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    period: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    initial_backoff: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_backoff: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))

    def backoff(self, restart: int) -> float:
        """Delay before the ``restart``-th restart in the current period (1-based)."""
        return min(self.max_backoff, self.initial_backoff * self.multiplier ** (restart - 1))


@attrs.define(eq=False)
class SupervisedChild:
    """A child's name and what is known about it (read by health and tests)."""

    name: str
    state: ChildState = ChildState.STARTING
    restarts: int = 0
    last_error: BaseException | None = None
    #: trio time of each restart inside the current intensity period
    restart_times: deque[float] = attrs.Factory(deque)
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    def stop(self) -> None:
        """Stop the child (it ends in state ``stopped``)."""
        self.cancel_scope.cancel()


ChildFn = Callable[..., Awaitable[Any]]
CrashHook = Callable[[SupervisedChild, BaseException], None]
RestartHook = Callable[[SupervisedChild], Awaitable[None]]
StateHook = Callable[[SupervisedChild], None]


class _StartedRelay:
    """The ``task_status`` handed to a child: relays the first start to the supervisor."""

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started
        self.started_called = False

    def started(self, value: Any = None) -> None:
        if self.started_called:
            raise RuntimeError("task_status.started() called twice")
        self.started_called = True
        self._on_started()


class Supervisor:
    """one_for_one supervision of children running in ``nursery``.

    Args:
        name: for logs (``deployment 'chat'``).
        nursery: where the children run; cancelling it stops them all.
        policy: restart policy for every child.
        on_escalate: called (synchronously) when a child exceeds its restart intensity.
    """

    def __init__(
        self,
        name: str,
        nursery: trio.Nursery,
        policy: RestartPolicy,
        *,
        on_escalate: Callable[[SupervisedChild, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._nursery = nursery
        self._on_escalate = on_escalate
        self.children: dict[str, SupervisedChild] = {}

    async def start_child(
        self,
        name: str,
        fn: ChildFn,
        *,
        on_crash: CrashHook | None = None,
        before_restart: RestartHook | None = None,
        on_running: StateHook | None = None,
    ) -> SupervisedChild:
        """Start ``fn`` as a supervised child; return once it started (or failed).

        ``fn(task_status=...)`` must call ``task_status.started()`` when ready.
        ``on_crash`` runs right after a crash (fail in-flight work there);
        ``before_restart`` runs after the backoff, before ``fn`` runs again (rebuild the
        session there); ``on_running`` runs each time the child reports started.
        """
        if name in self.children and self.children[name].state not in (
            ChildState.STOPPED,
            ChildState.FAILED,
        ):
            raise ValueError(f"{self.name}: a child named {name!r} is already running")
        child = SupervisedChild(name=name)
        self.children[name] = child
        await self._nursery.start(self._supervise, child, fn, on_crash, before_restart, on_running)
        return child

    async def _supervise(
        self,
        child: SupervisedChild,
        fn: ChildFn,
        on_crash: CrashHook | None,
        before_restart: RestartHook | None,
        on_running: StateHook | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        reported = False

        def report() -> None:
            nonlocal reported
            if not reported:
                reported = True
                task_status.started()

        def running() -> None:
            child.state = ChildState.RUNNING
            if on_running is not None:
                on_running(child)
            report()

        try:
            with child.cancel_scope:
                prepare: RestartHook | None = None
                while True:
                    error = await self._run_once(child, fn, running, prepare)
                    prepare = before_restart
                    if error is None:
                        child.state = ChildState.STOPPED
                        return
                    restart = self._may_restart(child)
                    if on_crash is not None:
                        on_crash(child, error)
                    if not restart:
                        self._fail(child, error)
                        return
                    child.state = ChildState.RESTARTING
                    delay = self.policy.backoff(len(child.restart_times))
                    log.warning(
                        "%s: child %s crashed (%s); restart %d in %.3fs",
                        self.name,
                        child.name,
                        describe_crash(error),
                        child.restarts,
                        delay,
                    )
                    await trio.sleep(delay)
        finally:
            if child.state not in (ChildState.FAILED,):
                child.state = ChildState.STOPPED
            report()

    async def _run_once(
        self,
        child: SupervisedChild,
        fn: ChildFn,
        running: Callable[[], None],
        prepare: RestartHook | None,
    ) -> BaseException | None:
        """Run ``prepare`` then ``fn`` once; return the exception either crashed with
        (a failed session rebuild counts as a crash), ``None`` if ``fn`` returned."""
        child.state = ChildState.STARTING
        try:
            if prepare is not None:
                await prepare(child)
            await fn(task_status=_StartedRelay(running))
        except Exception as exc:  # a crash: the supervisor's whole job is to catch it
            child.last_error = exc
            return exc
        return None

    def _may_restart(self, child: SupervisedChild) -> bool:
        now = trio.current_time()
        while child.restart_times and now - child.restart_times[0] >= self.policy.period:
            child.restart_times.popleft()
        if len(child.restart_times) >= self.policy.max_restarts:
            return False
        child.restart_times.append(now)
        child.restarts += 1
        return True

    def _fail(self, child: SupervisedChild, error: BaseException) -> None:
        child.state = ChildState.FAILED
        log.error(
            "%s: child %s exceeded its restart intensity (%d restarts within %gs); "
            "marked failed: %s",
            self.name,
            child.name,
            self.policy.max_restarts,
            self.policy.period,
            describe_crash(error),
        )
        if self._on_escalate is not None:
            self._on_escalate(child, error)
