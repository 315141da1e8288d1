"""Secret: a string that never shows itself."""

from __future__ import annotations

from typing import Any, NoReturn, final

_REDACTED = "Secret('**********')"


@final
class Secret:
    """A credential or other sensitive string.

    It never appears in ``repr``, ``str``, f-strings, ``%`` formatting, logs, pickles or
    JSON. Call :meth:`reveal` at the one place the value is needed (building a request
    header). Two secrets compare equal when their values are equal; the hash does not
    depend on the value, so a secret cannot be guessed through dictionary timing.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret takes a str, got {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """Return the secret value. Do not log or store what this returns."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return _REDACTED

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return _REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; pass the name of its source instead")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self
