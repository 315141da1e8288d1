"""Gateway keys: ``Authorization: Bearer <key>`` compared in constant time.

A key is one of ``[cluster].api_keys`` (no tenant) or the ``key`` of a ``[[key]]``
tenant (the tenant is its ``name``). Every configured key is compared on every request.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence

from atomr_infer_core import Secret, TenantKey
from atomr_infer_core.errors import ConfigError, UnauthorizedError

__all__ = ["KeyChecker", "all_keys", "check_bind_allowed", "is_loopback"]


def all_keys(settings_keys: Sequence[Secret], tenants: Iterable[TenantKey] = ()) -> list[Secret]:
    """Every key the gateway accepts: the cluster's and the tenants'."""
    return [*settings_keys, *(t.key for t in tenants)]


class KeyChecker:
    """Checks the bearer token of a request against the cluster's and the tenants' keys.

    With no keys configured every request passes (no tenant). Each key is compared with
    :func:`hmac.compare_digest`, and every key is compared whichever matches, so timing
    tells nothing about which key (or which tenant) was close.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[Secret], tenants: Iterable[TenantKey] = ()) -> None:
        cluster = [(k.reveal().encode(), None) for k in keys if k]
        named = [(t.key.reveal().encode(), t.name) for t in tenants if t.key]
        self._keys: tuple[tuple[bytes, str | None], ...] = (*cluster, *named)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: bytes | None) -> str | None:
        """The tenant ``authorization`` names (``None``: a cluster key, or no auth).

        Raises :class:`UnauthorizedError` unless it holds a valid key.
        """
        if not self._keys:
            return None
        if not authorization:
            raise UnauthorizedError(
                "missing API key: send it as 'Authorization: Bearer <key>' (one of the "
                "gateway's [cluster].api_keys or [[key]] keys)"
            )
        scheme, _, token = authorization.strip().partition(b" ")
        token = token.strip()
        ok = False
        tenant: str | None = None
        for key, name in self._keys:
            same = hmac.compare_digest(token, key)
            ok |= same
            if same:
                tenant = name
        if scheme.lower() != b"bearer" or not ok:
            raise UnauthorizedError(
                "invalid API key: the bearer token matches none of the gateway's "
                "[cluster].api_keys or [[key]] keys"
            )
        return tenant


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
