"""``serve --workers N``: N gateway processes on one port, under supervision.

The parent binds the listening socket once and starts N workers (``serve --fd``) that
accept on it; the kernel spreads the connections over them. A worker that dies is
restarted after a second (a supervisor killed with -9 leaves its workers running:
stop them by their pids). SIGTERM or SIGINT goes on to every worker, each drains its
in-flight requests (``shutdown_grace``), and the parent exits once all have: 0 when every
worker exited cleanly. A second signal kills the workers.

Limits and budgets hold across workers only with a shared state backend, so N > 1 with
the memory backend is refused, with the lines of ``[state]`` that fix it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
from typing import Any

import trio

__all__ = ["serve_workers"]

log = logging.getLogger("atomr_infer.cli")

#: a worker that died is started again after this long
RESTART_DELAY = 1.0

REFUSAL = """atomr-infer serve: --workers {n} needs state the workers share: with the memory \
backend each worker would hold every limit and budget on its own ({n} times each cap).
Add to {where}:

[state]
backend = "redis"
url = "redis://127.0.0.1:6379/0"
"""


def serve_workers(args: argparse.Namespace, config: Any) -> int:
    """Run ``args.workers`` gateway workers on one socket until a signal drains them."""
    n = args.workers
    if n < 1:
        print(f"atomr-infer serve: --workers must be >= 1 (got {n})", file=sys.stderr)
        return 2
    if str(getattr(config.state.backend, "value", config.state.backend)) != "redis":
        where = args.config or "the config file (--config)"
        print(REFUSAL.format(n=n, where=where), file=sys.stderr)
        return 2
    host = config.cluster.host if args.host is None else args.host
    port = config.cluster.port if args.port is None else args.port
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    bound = listener.getsockname()[1]
    url = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    try:
        return trio.run(_supervise, args, config, listener.fileno(), url, n)
    finally:
        listener.close()


def _worker_command(args: argparse.Namespace, fd: int) -> list[str]:
    command = [sys.executable, "-m", "atomr_infer", "serve", "--fd", str(fd)]
    if args.config:
        command += ["--config", args.config]
    return [*command, "--log-level", args.log_level]


async def _supervise(args: argparse.Namespace, config: Any, fd: int, url: str, n: int) -> int:
    from ._cli import _banner

    stop = trio.Event()
    live: dict[int, trio.Process] = {}
    codes: dict[int, int] = {}
    ready = [0]
    all_ready = trio.Event()

    def on_ready() -> None:
        ready[0] += 1
        if ready[0] == n:
            all_ready.set()

    async with trio.open_nursery() as outer:
        outer.start_soon(_watch_signals, stop, live)

        async def announce() -> None:
            await all_ready.wait()
            print(_banner(url, config) + f"\n  {n} workers share this port.", flush=True)

        outer.start_soon(announce)
        async with trio.open_nursery() as workers:
            for index in range(n):
                workers.start_soon(
                    _keep_running, index, _worker_command(args, fd), fd, stop, live, codes, on_ready
                )
        outer.cancel_scope.cancel()
    return 0 if all(code == 0 for code in codes.values()) else 1


async def _keep_running(
    index: int,
    command: list[str],
    fd: int,
    stop: trio.Event,
    live: dict[int, trio.Process],
    codes: dict[int, int],
    on_ready: Any,
) -> None:
    first = True
    while True:
        proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, pass_fds=(fd,))
        live[index] = proc
        try:
            async with trio.open_nursery() as nursery:
                serving = trio.Event()
                banner: list[bool] = []
                nursery.start_soon(_read_banner, proc, serving, banner)
                await serving.wait()
                if banner:
                    log.warning("worker %d (pid %d) serving", index, proc.pid)
                elif first:  # it cannot start at all (the banner never came): give up
                    code = await proc.wait()
                    codes[index] = code or 1
                    stop.set()
                    for other in list(live.values()):
                        other.send_signal(signal.SIGTERM)
                    return
                if first:
                    first = False
                    on_ready()
                code = await proc.wait()
        finally:
            live.pop(index, None)
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        if stop.is_set():
            codes[index] = code
            return
        log.error(
            "worker %d (pid %d) exited with %s; restarting it in %.0fs",
            index,
            proc.pid,
            code,
            RESTART_DELAY,
        )
        await trio.sleep(RESTART_DELAY)


async def _read_banner(proc: trio.Process, serving: trio.Event, banner: list[bool]) -> None:
    """Set ``serving`` once the worker printed its banner (``banner`` gets ``True``), or
    once it exited without one; keep its stdout drained."""
    assert proc.stdout is not None
    seen = b""
    async for data in proc.stdout:
        if not serving.is_set():
            seen += data
            if b"atomr-infer gateway on " in seen:
                banner.append(True)
                serving.set()
    serving.set()


async def _watch_signals(stop: trio.Event, live: dict[int, trio.Process]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("second signal: killing the workers")
                for proc in list(live.values()):
                    proc.kill()
                return
            log.warning("%s: draining every worker", signal.Signals(signum).name)
            stop.set()
            for proc in list(live.values()):
                proc.send_signal(signal.SIGTERM)
