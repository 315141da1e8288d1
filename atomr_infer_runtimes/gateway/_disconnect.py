"""Reading an ASGI request body with a size limit, and noticing a client that leaves.

hypercorn's trio worker does not interrupt a handler that is not sending when the
client disconnects (pgjones/hypercorn#210); it only queues ``http.disconnect`` on the
receive channel. :func:`cancel_on_disconnect` watches that channel in a sibling task and
cancels the request's scope the moment the message arrives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from atomr_infer_core.errors import PayloadTooLargeError

__all__ = ["ClientDisconnected", "ResponseState", "cancel_on_disconnect", "read_body"]

Receive = Callable[[], Awaitable[dict[str, Any]]]


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body exceeds the gateway's limit of {limit} bytes ([cluster].max_request_bytes)",
        limit_bytes=limit,
    )


async def read_body(receive: Receive, *, limit: int, content_length: int | None) -> bytes:
    """Read the whole body; raise :class:`PayloadTooLargeError` past ``limit`` bytes."""
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class ResponseState:
    """What the watcher needs to know: has the response ended, did the client leave."""

    __slots__ = ("finished", "gone", "started")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.gone = False


async def cancel_on_disconnect(
    receive: Receive, scope: trio.CancelScope, state: ResponseState
) -> None:
    """Wait for ``http.disconnect`` and cancel ``scope`` unless the response already ended.

    Run it in the request's nursery after the body was read; cancel it when the
    response is complete. hypercorn also queues ``http.disconnect`` once a response
    was sent in full, which is not a client leaving.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not state.finished:
                state.gone = True
                scope.cancel()
            return
