"""The contract every runtime implements: ``ModelRunner`` and ``RunHandle``.

Structured concurrency, in one paragraph: a runner's long-lived work (HTTP client,
engine worker slots, a model's batching loop) runs inside :meth:`ModelRunner.run`, which
the replica starts in *its* nursery (``await nursery.start(runner.run)``) and cancels to
stop the runner. A request calls :meth:`ModelRunner.execute` from the caller's own task
and gets a :class:`RunHandle`: an async context manager whose value is an async iterator
of :class:`~atomr_infer_core.TokenChunk`. Leaving the ``async with`` block — normally,
by an exception, or by cancellation — cancels the request's work and releases its
upstream connection or batch slot before ``__aexit__`` returns. No task created for a
request may outlive its handle. Errors are raised as
:class:`~atomr_infer_core.errors.InferenceError` subclasses, from ``__aenter__`` (before
any output) or from iteration (possibly after output began).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from ._kinds import RuntimeKind, TransportKind
from ._messages import ExecuteBatch, RequestKind
from ._tokens import TokenChunk

__all__ = ["ModelRunner", "RunHandle", "SessionRebuildCause"]


class SessionRebuildCause(str, enum.Enum):
    """Why :meth:`ModelRunner.rebuild_session` is called."""

    SESSION_POISONED = "session_poisoned"
    REMOTE_AUTH_FAILURE = "remote_auth_failure"
    REMOTE_CONFIG_CHANGE = "remote_config_change"
    REPLICA_RESTART = "replica_restart"
    MANUAL = "manual"

    def __str__(self) -> str:
        return self.value


@runtime_checkable
class RunHandle(Protocol):
    """One running request: ``async with handle as chunks: async for c in chunks: ...``.

    ``contextlib.asynccontextmanager`` over an async generator satisfies it.
    """

    async def __aenter__(self) -> AsyncIterator[TokenChunk]: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


@runtime_checkable
class ModelRunner(Protocol):
    """A model behind one replica.

    Attributes:
        runtime_kind: the runtime's name (``"openai"``, ``"torch"``, …).
        transport_kind: where the work happens; remote runners are retried and limited
            by the remote engine, local ones are batched by the local engine.
        capabilities: the request kinds this runner serves.

    Optional attributes (read with a default, so a runner may leave them out):
        prefill: ``True`` when a trailing assistant message is continued rather than
            answered (Anthropic's assistant prefill); stream continuation then sends the
            partial answer as that prefix instead of a continuation instruction.
        prefix_cache: the runner caches prompt prefixes (``cache_aware`` routing).
    """

    runtime_kind: RuntimeKind
    transport_kind: TransportKind
    capabilities: frozenset[RequestKind]

    async def run(self, *, task_status: Any = ...) -> None:
        """Run the runner's long-lived work until cancelled.

        Call ``task_status.started()`` once :meth:`execute` may be called. Raising from
        here means the replica crashed: the supervisor fails its in-flight requests,
        calls :meth:`rebuild_session` and restarts it with backoff.
        """
        ...

    def execute(self, batch: ExecuteBatch) -> RunHandle:
        """Start ``batch`` and return its handle. Must not block; work starts on enter."""
        ...

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        """Rebuild credentials or the model session. In-flight requests may finish on
        the old session; new ones use the new one."""
        ...
