"""Core and runtime tests never load entry points: plugins are passed explicitly."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
import trio

os.environ.setdefault("ATOMR_INFER_LOAD_PLUGINS", "")

BANNER = b"atomr-infer gateway on "


async def _read_banner(proc: trio.Process) -> str:
    assert proc.stdout is not None
    buffer = b""
    while BANNER not in buffer or not buffer.endswith(b"\n"):
        data = await proc.stdout.receive_some(4096)
        assert data, "serve exited before printing its banner"
        buffer += data
    line = next(ln for ln in buffer.decode().splitlines() if BANNER.decode() in ln)
    return line.split(" on ", 1)[1].split()[0]


@pytest.fixture
def read_banner() -> Callable[[trio.Process], Awaitable[str]]:
    """``await read_banner(proc)``: the URL a ``serve`` subprocess prints once it listens
    (its stdout must be a pipe)."""
    return _read_banner
