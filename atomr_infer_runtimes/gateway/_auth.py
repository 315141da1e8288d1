"""Gateway keys: ``Authorization: Bearer <key>`` compared in constant time."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from atomr_infer_core import Secret
from atomr_infer_core.errors import ConfigError, UnauthorizedError

__all__ = ["KeyChecker", "check_bind_allowed", "is_loopback"]


class KeyChecker:
    """Checks the bearer token of a request against the cluster's ``api_keys``.

    With no keys configured every request passes. Each key is compared with
    :func:`hmac.compare_digest`, and every key is compared, so timing tells nothing.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[Secret]) -> None:
        self._keys = tuple(k.reveal().encode() for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: bytes | None) -> None:
        """Raise :class:`UnauthorizedError` unless ``authorization`` holds a valid key."""
        if not self._keys:
            return
        if not authorization:
            raise UnauthorizedError(
                "missing API key: send it as 'Authorization: Bearer <key>' (one of the gateway's [cluster].api_keys)"
            )
        scheme, _, token = authorization.strip().partition(b" ")
        token = token.strip()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        if scheme.lower() != b"bearer" or not ok:
            raise UnauthorizedError(
                "invalid API key: the bearer token matches none of the gateway's [cluster].api_keys"
            )


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, *, keys: Sequence[Secret], allow_unauthenticated: bool) -> None:
    """Refuse to serve without keys on a non-loopback address unless explicitly allowed."""
    if any(keys) or allow_unauthenticated or is_loopback(host):
        return
    raise ConfigError(
        [
            (
                "cluster.bind",
                f"refusing to serve on {host!r} without authentication: set [cluster].api_keys, "
                "bind 127.0.0.1, or set [cluster].allow_unauthenticated = true",
            )
        ]
    )
