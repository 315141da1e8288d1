"""Credentials and the remote session: an immutable (client, credential) snapshot.

A :class:`CredentialProvider` yields the current credential; the variants here read a
static :class:`~atomr_infer_core.Secret`, an environment variable, a file (re-read on
every rebuild, for rotated keys), or an async callable (OAuth / Azure AD tokens).

:func:`open_remote_session` owns the HTTP clients. Requests borrow the current
:class:`SessionSnapshot` with ``async with session.borrow() as snapshot``; a
:meth:`RemoteSession.rebuild` swaps in a new snapshot while borrowed ones stay valid, and a
retired client is closed by its last borrower. No background task: nothing to own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import attrs
import httpx
import trio

from atomr_infer_core import Secret, SessionRebuildCause
from atomr_infer_core.errors import UnauthorizedError

from ._http import HttpClientOptions, open_http_client

__all__ = [
    "CallableCredential",
    "CredentialProvider",
    "EnvCredential",
    "FileCredential",
    "RemoteSession",
    "SessionSnapshot",
    "StaticCredential",
    "credential_problem",
    "open_remote_session",
]


def credential_problem(provider: object) -> str | None:
    """Why ``provider`` cannot yield a credential now, when that can be known without
    I/O beyond a file read (an unset variable, a missing file); ``None`` otherwise.

    Providers opt in with a ``problem()`` method; the start-up checks of ``check`` and
    ``serve`` call this so a permanent problem is reported before anything serves.
    """
    problem = getattr(provider, "problem", None)
    return problem() if callable(problem) else None


@runtime_checkable
class CredentialProvider(Protocol):
    """Where a session's credential comes from.

    ``credential()`` is awaited when the session opens and on every rebuild; it raises
    :class:`~atomr_infer_core.errors.UnauthorizedError` when no credential can be had.
    ``None`` means "send no credential" (a local proxy without auth).
    """

    async def credential(self) -> Secret | None: ...


@attrs.frozen
class StaticCredential:
    """A fixed secret (or ``None`` for no credential)."""

    secret: Secret | None

    async def credential(self) -> Secret | None:
        return self.secret

    def problem(self) -> str | None:
        if self.secret is not None and not self.secret.reveal().strip():
            return "the credential is empty (an unset ${VAR}?)"
        return None


@attrs.frozen
class EnvCredential:
    """The value of an environment variable, read at open and at every rebuild.

    ``fallbacks`` are tried in order when ``variable`` is unset (Gemini's
    ``GEMINI_API_KEY``, then ``GOOGLE_API_KEY``); with ``required = False`` none being
    set means "send no credential" (a local proxy without auth).
    """

    variable: str
    #: what to set instead, for the error message (e.g. ``runtime_config.api_key``)
    alternative: str = "runtime_config.api_key"
    fallbacks: tuple[str, ...] = ()
    required: bool = True

    def _set(self) -> str | None:
        for name in (self.variable, *self.fallbacks):
            if os.environ.get(name, "").strip():
                return name
        return None

    async def credential(self) -> Secret | None:
        name = self._set()
        if name is None:
            if not self.required:
                return None
            raise UnauthorizedError(self._unset())
        return Secret(os.environ[name].strip())

    def problem(self) -> str | None:
        if self._set() is None and self.required:
            return self._unset()
        return None

    def _unset(self) -> str:
        return (
            f"environment variable {self.variable} is not set: export it, or set "
            f"{self.alternative} in the deployment"
        )


@attrs.frozen
class FileCredential:
    """The stripped contents of a file, re-read at every rebuild (rotated keys)."""

    path: Path = attrs.field(converter=Path)

    async def credential(self) -> Secret | None:
        try:
            text = await trio.Path(self.path).read_text()
        except OSError as exc:
            raise UnauthorizedError(
                f"cannot read the credential file {self.path} ({exc.strerror}); check the path "
                "and its permissions"
            ) from exc
        if not text.strip():
            raise UnauthorizedError(f"the credential file {self.path} is empty")
        return Secret(text.strip())

    def problem(self) -> str | None:
        try:
            text = self.path.read_text()
        except OSError as exc:
            return f"cannot read the credential file {self.path} ({exc.strerror})"
        return None if text.strip() else f"the credential file {self.path} is empty"


@attrs.frozen
class CallableCredential:
    """An async callable returning the credential (a ``Secret`` or a ``str``)."""

    fetch: Callable[[], Awaitable[Secret | str | None]]

    async def credential(self) -> Secret | None:
        value = await self.fetch()
        if value is None or isinstance(value, Secret):
            return value
        return Secret(value)


@attrs.frozen(eq=False)
class SessionSnapshot:
    """What one request uses: the HTTP client and the credential. Never mutated."""

    client: httpx.AsyncClient
    credential: Secret | None
    #: increases with every rebuild
    generation: int


@attrs.define(eq=False)
class _Slot:
    snapshot: SessionSnapshot
    close: Callable[[], Awaitable[None]] | None
    borrowers: int = 0
    retired: bool = False


class RemoteSession:
    """The current snapshot, borrowed per request; see :func:`open_remote_session`."""

    def __init__(
        self,
        credentials: CredentialProvider,
        options: HttpClientOptions,
        base_url: str,
    ) -> None:
        self._credentials = credentials
        self._options = options
        self._base_url = base_url
        self._lock = trio.Lock()
        self._slot: _Slot | None = None
        self.rebuilds = 0

    @property
    def snapshot(self) -> SessionSnapshot:
        """The current snapshot (for reading; requests should :meth:`borrow`)."""
        if self._slot is None:
            raise RuntimeError("the session is not open")
        return self._slot.snapshot

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[SessionSnapshot]:
        """Use the current snapshot for one request; it stays valid until the block exits."""
        slot = self._slot
        if slot is None:
            raise RuntimeError("the session is not open")
        slot.borrowers += 1
        try:
            yield slot.snapshot
        finally:
            slot.borrowers -= 1
            await self._maybe_close(slot)

    async def rebuild(
        self,
        cause: SessionRebuildCause = SessionRebuildCause.MANUAL,
        *,
        seen_generation: int | None = None,
    ) -> SessionSnapshot:
        """Fetch the credential again and swap in a new snapshot.

        A new HTTP client is built unless ``cause`` is an auth failure (then the pool is
        kept). With ``seen_generation``, a rebuild that another task already did since that
        generation is not repeated (many requests failing with 401 at once rebuild once).
        Raises ``UnauthorizedError`` when the provider has no credential; the old snapshot
        then stays in place.
        """
        async with self._lock:
            old = self._slot
            if old is not None and seen_generation is not None:
                if old.snapshot.generation > seen_generation:
                    return old.snapshot
            credential = await self._credentials.credential()
            if old is not None and cause is SessionRebuildCause.REMOTE_AUTH_FAILURE:
                client, close = old.snapshot.client, old.close
                old.close = None  # the client moves to the new slot
            else:
                client, close = await self._open_client()
            generation = 0 if old is None else old.snapshot.generation + 1
            self._slot = _Slot(SessionSnapshot(client, credential, generation), close)
            if old is not None:
                self.rebuilds += 1
                old.retired = True
                await self._maybe_close(old)
            return self._slot.snapshot

    async def _open_client(self) -> tuple[httpx.AsyncClient, Callable[[], Awaitable[None]]]:
        manager = open_http_client(self._options, base_url=self._base_url)
        client = await manager.__aenter__()

        async def close() -> None:
            await manager.__aexit__(None, None, None)

        return client, close

    async def _maybe_close(self, slot: _Slot) -> None:
        # the last borrower of a retired client closes it; shielded, as closing an idle
        # pool is short and must happen even when the borrower was cancelled
        if slot.retired and slot.borrowers == 0 and slot.close is not None:
            close, slot.close = slot.close, None
            with trio.CancelScope(shield=True):
                await close()

    async def _close_all(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None and slot.close is not None:
            close, slot.close = slot.close, None
            await close()


@asynccontextmanager
async def open_remote_session(
    credentials: CredentialProvider,
    options: HttpClientOptions | None = None,
    *,
    base_url: str = "",
) -> AsyncIterator[RemoteSession]:
    """Open a session (first credential fetch, first client) for the block.

    Raises ``UnauthorizedError`` from the credential provider before the block runs. On
    exit the current client is closed; a retired client is closed by its last borrower.
    """
    session = RemoteSession(credentials, options or HttpClientOptions(), base_url)
    await session.rebuild(SessionRebuildCause.MANUAL)
    try:
        yield session
    finally:
        with trio.CancelScope(shield=True):
            await session._close_all()
