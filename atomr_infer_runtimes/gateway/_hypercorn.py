"""Connection hygiene fixes for hypercorn's trio worker (hypercorn 0.18).

hypercorn closes an idle keep-alive connection from a per-connection "idle task": it
waits ``keep_alive_timeout`` or the worker's shutdown, then closes the socket. Two
paths leave a connection without a working idle task, each seen from outside:

- The idle task is restarted from the task that sent the last byte of a response. When
  that task is being cancelled (Quart cancels its request nursery as soon as hypercorn
  queues ``http.disconnect`` after a complete response; a client gone mid-request
  cancels ours), the restart dies with it: the connection is idle with no idle task, so
  SIGTERM waits out the whole ``shutdown_grace`` for it, and a socket whose client sent
  FIN can stay in CLOSE_WAIT.
- When the client closes an idle connection, the read loop ends but the connection's
  task group still waits for the idle task (``keep_alive_timeout``, 75 s here) before
  the socket is closed: CLOSE_WAIT for that long, one fd per such client.

:class:`HygienicTCPServer` restarts the idle task shielded from the caller's
cancellation, and stops it once the peer is gone, so the socket closes at once.
:func:`install` makes hypercorn's trio worker use it.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.events import Updated
from hypercorn.trio import run as _run
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["HygienicTCPServer", "install"]


class HygienicTCPServer(TCPServer):
    """hypercorn's TCPServer whose idle task survives a cancelled sender and ends
    with the peer."""

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated) and event.idle:
            # bounded: starting a task; the idle task itself runs in the connection's
            # task group, not under this (possibly cancelled) caller
            with trio.CancelScope(shield=True):
                await self.idle_task.restart(self._task_group, self._idle_timeout)
            return
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            # the peer is gone (EOF, reset, read timeout): nothing is idle any more,
            # and the task group must not wait keep_alive_timeout to close the socket
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()


def install() -> None:
    """Make hypercorn's trio worker serve connections with :class:`HygienicTCPServer`."""
    if getattr(_run, "TCPServer", None) is TCPServer:
        _run.TCPServer = HygienicTCPServer  # type: ignore[misc]
