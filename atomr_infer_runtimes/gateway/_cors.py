"""CORS for browser apps, off unless ``[cluster] cors_origins`` lists origins.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an
allowed origin is answered 204 here, before auth (browsers send no credentials on a
preflight); from any other origin it gets 403. Every other response to an allowed origin
carries ``Access-Control-Allow-Origin`` and exposes the headers clients read
(``x-request-id``, ``x-ratelimit-*``, ``x-atomr-deployment``, ``openai-processing-ms``,
``retry-after``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["CORSMiddleware"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_METHODS = b"GET, POST, OPTIONS"
_EXPOSED = b", ".join(
    [
        b"x-request-id",
        b"x-atomr-deployment",
        b"openai-processing-ms",
        b"retry-after",
        b"retry-after-ms",
        b"x-should-retry",
        *(
            f"x-ratelimit-{what}-{kind}".encode()
            for kind in ("requests", "tokens")
            for what in ("limit", "remaining", "reset")
        ),
    ]
)
_MAX_AGE = b"600"


class CORSMiddleware:
    """Wraps the gateway's ASGI app with CORS for ``origins`` (``"*"``: any origin)."""

    def __init__(self, app: App, origins: Sequence[str]) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    def begin_shutdown(self, grace: float) -> None:
        """Pass the shutdown on to the wrapped gateway (it cuts requests at ``grace``)."""
        self.app.begin_shutdown(grace)

    def _allowed(self, origin: bytes) -> bool:
        try:
            text = origin.decode("ascii")
        except UnicodeDecodeError:
            return False
        return self.any_origin or text in self.origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await self._preflight(origin, headers, send)
            return
        if not self._allowed(origin):
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), *self._simple(origin)]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _simple(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", b"*" if self.any_origin else origin),
            (b"access-control-expose-headers", _EXPOSED),
            (b"vary", b"origin"),
        ]

    async def _preflight(self, origin: bytes, headers: dict[bytes, bytes], send: Send) -> None:
        if not self._allowed(origin):
            body = json.dumps(
                {
                    "error": {
                        "message": f"origin {origin.decode('latin-1')!r} is not in [cluster] "
                        "cors_origins; add it there to let a browser app call this gateway",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "cors_origin_not_allowed",
                    }
                }
            ).encode()
            response = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 403, "headers": response})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        requested = headers.get(b"access-control-request-headers", b"")
        response = [
            (b"access-control-allow-origin", b"*" if self.any_origin else origin),
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-max-age", _MAX_AGE),
            (b"vary", b"origin, access-control-request-method, access-control-request-headers"),
            (b"content-length", b"0"),
        ]
        if requested:
            response.append((b"access-control-allow-headers", requested))
        await send({"type": "http.response.start", "status": 204, "headers": response})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
