"""The OpenAI-compatible HTTP gateway (quart-trio on hypercorn's trio worker)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ._app import create_app as create_app
from ._auth import all_keys, check_bind_allowed as check_bind_allowed
from ._errors import error_body as error_body, error_response as error_response
from ._hypercorn import install as _install_connection_fixes

__all__ = [
    "check_bind_allowed",
    "create_app",
    "error_body",
    "error_response",
    "open_gateway",
    "serve_gateway",
]


#: hypercorn's own grace ends this long after ours, so a request the gateway cuts at
#: ``shutdown_grace`` still gets to send its closing error event and end of body
_CUT_MARGIN = 1.0


def _hypercorn_config(host: str, port: int, grace: float) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = grace + _CUT_MARGIN
    config.accesslog = None
    config.errorlog = logging.getLogger("atomr_infer.gateway.server")
    config.keep_alive_timeout = 75.0
    return config


async def serve_gateway(
    cluster: Any,
    *,
    host: str | None = None,
    port: int | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    fd: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``cluster`` over HTTP until cancelled or ``shutdown_trigger`` returns.

    ``fd``: accept on this inherited listening socket instead of binding (the workers of
    ``serve --workers N`` share their parent's socket).

    ``host``/``port`` default to ``[cluster].bind``; port 0 picks a free port, and
    ``task_status.started(url)`` reports the bound ``http://host:port``. When the
    trigger returns, the listener closes and in-flight requests get
    ``[cluster].shutdown_grace`` seconds to finish before they are cancelled.

    Raises:
        ConfigError: no API keys on a non-loopback address without ``allow_unauthenticated``.
    """
    settings = cluster.config.cluster
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    check_bind_allowed(
        host,
        keys=all_keys(settings.api_keys, getattr(cluster.config, "keys", ())),
        allow_unauthenticated=settings.allow_unauthenticated,
    )
    grace = float(settings.shutdown_grace)
    config = _hypercorn_config(host, port, grace)
    if fd is not None:
        config.bind = [f"fd://{fd}"]
    _install_connection_fixes()
    app = create_app(cluster)
    trigger = None
    if shutdown_trigger is not None:
        wait_for_stop = shutdown_trigger

        async def trigger() -> None:
            await wait_for_stop()
            app.begin_shutdown(grace)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=trigger))
        task_status.started(binds[0])


@asynccontextmanager
async def open_gateway(
    cluster: Any, *, host: str | None = None, port: int | None = None
) -> AsyncIterator[str]:
    """Serve ``cluster`` for the duration of the block; yield the bound base URL.

    The gateway runs in a nursery this context manager owns. Leaving the block shuts it
    down gracefully: the listener closes and in-flight requests get
    ``[cluster].shutdown_grace`` to finish before they are cancelled.
    """
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            partial(serve_gateway, cluster, host=host, port=port, shutdown_trigger=stop.wait)
        )
        try:
            yield url
        finally:
            stop.set()
