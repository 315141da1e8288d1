"""Credential providers and the remote session's snapshot swaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel

from atomr_infer_core import Secret, SessionRebuildCause
from atomr_infer_core.errors import UnauthorizedError
from atomr_infer_remote._session import (
    CallableCredential,
    EnvCredential,
    FileCredential,
    StaticCredential,
    open_remote_session,
)


async def test_static_and_callable_credentials() -> None:
    assert await StaticCredential(Secret("k")).credential() == Secret("k")
    assert await StaticCredential(None).credential() is None
    calls = []

    async def fetch() -> str:
        calls.append(1)
        return f"token-{len(calls)}"

    provider = CallableCredential(fetch)
    assert await provider.credential() == Secret("token-1")
    assert await provider.credential() == Secret("token-2")


async def test_env_credential_missing_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATOMR_TEST_KEY", raising=False)
    with pytest.raises(UnauthorizedError, match="ATOMR_TEST_KEY is not set"):
        await EnvCredential("ATOMR_TEST_KEY").credential()
    monkeypatch.setenv("ATOMR_TEST_KEY", "sk-env")
    assert await EnvCredential("ATOMR_TEST_KEY").credential() == Secret("sk-env")


async def test_file_credential_is_reread_on_rebuild(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-one\n")
    async with open_remote_session(FileCredential(key_file)) as session:
        assert session.snapshot.credential == Secret("sk-one")
        key_file.write_text("sk-two\n")
        snapshot = await session.rebuild(SessionRebuildCause.REMOTE_AUTH_FAILURE)
    assert snapshot.credential == Secret("sk-two")
    assert snapshot.generation == 1
    assert session.rebuilds == 1


async def test_missing_file_is_unauthorized(tmp_path: Path) -> None:
    with pytest.raises(UnauthorizedError, match="cannot read the credential file"):
        async with open_remote_session(FileCredential(tmp_path / "nope")):
            pass  # pragma: no cover


async def test_borrowed_snapshot_survives_rebuild_and_old_client_closes_after() -> None:
    async with open_remote_session(StaticCredential(Secret("k"))) as session:
        async with session.borrow() as old:
            new = await session.rebuild(SessionRebuildCause.REMOTE_CONFIG_CHANGE)
            assert new.client is not old.client
            assert not old.client.is_closed  # still in use by the borrower
        await trio.testing.wait_all_tasks_blocked()
        assert old.client.is_closed
        assert not new.client.is_closed
    assert new.client.is_closed


async def test_auth_rebuild_keeps_the_pool() -> None:
    async with open_remote_session(StaticCredential(Secret("k"))) as session:
        before = session.snapshot
        after = await session.rebuild(SessionRebuildCause.REMOTE_AUTH_FAILURE)
        assert after.client is before.client
        assert not after.client.is_closed


async def test_concurrent_401_rebuilds_once() -> None:
    fetches = []

    async def fetch() -> str:
        fetches.append(1)
        await trio.lowlevel.checkpoint()
        return "k"

    async with open_remote_session(CallableCredential(fetch)) as session:
        seen = session.snapshot.generation
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(
                    lambda: session.rebuild(
                        SessionRebuildCause.REMOTE_AUTH_FAILURE, seen_generation=seen
                    )
                )
        assert session.snapshot.generation == 1
    assert len(fetches) == 2  # open + one rebuild


async def test_secret_never_in_snapshot_repr() -> None:
    async with open_remote_session(StaticCredential(Secret("sk-very-secret"))) as session:
        assert "sk-very-secret" not in repr(session.snapshot)
