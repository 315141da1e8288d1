"""Core and runtime tests never load entry points: plugins are passed explicitly."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

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


_NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


class RedisServer:
    """A real ``redis-server`` on a free loopback port, without persistence."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: Any = None

    def start(self) -> None:
        import shutil
        import subprocess

        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/setup.sh (apt redis-server)")
        self._proc = subprocess.Popen(
            [binary, *("--port", str(self.port), "--bind", "127.0.0.1"), *_NO_PERSISTENCE],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        for line in self._proc.stdout:  # blocks until the server says it listens
            if "Ready to accept connections" in line:
                return
        raise RuntimeError(f"redis-server exited with {self._proc.wait()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running redis-server (``.url``); ``.stop()`` / ``.start()`` kill and revive it."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
