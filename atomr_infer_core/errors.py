"""The one error hierarchy of atomr-infer.

::

    InferenceError                      every failure of a request; has a stable JSON form
    ├── RateLimitedError                429; retry_after when known           retryable
    ├── QuotaExceededError              429 insufficient_quota upstream       -
    ├── BudgetExceededError             429 insufficient_quota, our budget    -
    ├── CircuitOpenError                503; truthful opened_at / retry_at    -
    ├── CapacityExhaustedError          503 (backpressure: queue full, reject policy)
    │   ├── DrainingError               503; the deployment is shutting down
    │   └── DeviceOutOfMemoryError      503; a local model's GPU ran out of memory (the step's sequences)
    ├── ContentFilteredError            400 content_filter                    -
    ├── ContextLengthExceededError      400 context_length_exceeded           -
    ├── BadRequestError                 400; ``param`` names the field        -
    ├── PayloadTooLargeError            413                                   -
    ├── UnauthorizedError               401                                   -
    ├── ForbiddenError                  403                                   -
    │   └── ModelNotAllowedError        403 model_not_allowed: a [[key]]'s models -
    ├── NotFoundError                   404 model_not_found                   -
    ├── NetworkError                    502                                   retryable, breaker
    ├── ServerError                     502; upstream status and body         retryable, breaker
    ├── MalformedStreamError            502; upstream sent garbage            retryable, breaker
    ├── RequestTimeoutError             504                                   retryable, breaker
    ├── SessionPoisonedError            503; the runner rebuilds its session  -
    ├── StateUnavailableError           503 state_unavailable: shared state down -
    └── InternalError                   500; a bug in atomr-infer             -

    ConfigError                         bad configuration; lists every problem with its key path
    └── RuntimeNotInstalledError        a deployment names a runtime whose plugin is missing

Behaviour is a class attribute (``retryable``, ``counts_as_circuit_failure``,
``http_status``, ``code``), never parsed from a message. ``to_json()`` and
:func:`error_from_json` give a stable wire form for every variant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

__all__ = [
    "BadRequestError",
    "BudgetExceededError",
    "CapacityExhaustedError",
    "CircuitOpenError",
    "ConfigError",
    "ContentFilteredError",
    "ContextLengthExceededError",
    "DeploymentFailedError",
    "DeviceOutOfMemoryError",
    "DrainingError",
    "ForbiddenError",
    "InferenceError",
    "InternalError",
    "MalformedStreamError",
    "ModelNotAllowedError",
    "NetworkError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QuotaExceededError",
    "RateLimitedError",
    "RequestTimeoutError",
    "RuntimeNotInstalledError",
    "ServerError",
    "SessionPoisonedError",
    "ShuttingDownError",
    "StateUnavailableError",
    "UnauthorizedError",
    "UnsupportedParameterError",
    "error_from_json",
]


class InferenceError(Exception):
    """Base of every request failure.

    Subclasses declare their fields in ``_fields``; each field is a keyword argument of
    the constructor and an attribute. ``message`` is always present.
    """

    kind: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False
    counts_as_circuit_failure: ClassVar[bool] = False
    http_status: ClassVar[int] = 500
    code: ClassVar[str | None] = None
    error_type: ClassVar[str] = "server_error"
    _fields: ClassVar[tuple[str, ...]] = ()
    _registry: ClassVar[dict[str, type[InferenceError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            InferenceError._registry[cls.kind] = cls

    def __init__(self, message: str = "", **fields: Any) -> None:
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown fields {sorted(unknown)}")
        for name in self._fields:
            setattr(self, name, fields.get(name))
        self.message = message or self._default_message()
        #: the deployment that produced the error, when known (set by the runtime layer)
        self.deployment: str | None = None
        super().__init__(self.message)

    def _default_message(self) -> str:
        return self.kind.replace("_", " ")

    @property
    def retry_after(self) -> float | None:
        """Seconds the caller should wait before trying again, when known."""
        return None

    def to_json(self) -> dict[str, Any]:
        """A stable JSON form: ``{"kind": ..., "message": ..., <fields>}``."""
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        for name in self._fields:
            out[name] = getattr(self, name)
        out["deployment"] = self.deployment
        return out

    def __repr__(self) -> str:
        parts = [repr(self.message)]
        parts += [f"{n}={getattr(self, n)!r}" for n in self._fields]
        return f"{type(self).__name__}({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (error_from_json, (self.to_json(),))


def error_from_json(data: Mapping[str, Any]) -> InferenceError:
    """Rebuild an error from :meth:`InferenceError.to_json` output."""
    cls = InferenceError._registry.get(str(data.get("kind")), InternalError)
    fields = {k: data.get(k) for k in cls._fields}
    error = cls(str(data.get("message", "")), **fields)
    error.deployment = data.get("deployment")
    return error


class _RetryAfterMixin(InferenceError):
    @property
    def retry_after(self) -> float | None:
        return self.__dict__.get("retry_after_s")


class RateLimitedError(_RetryAfterMixin):
    """The provider or our own limiter refused for now. Wait ``retry_after`` seconds."""

    kind = "rate_limited"
    retryable = True
    http_status = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"
    _fields = ("provider", "retry_after_s")
    provider: str | None
    retry_after_s: float | None


class QuotaExceededError(InferenceError):
    """The upstream account has no quota left; retrying will not help."""

    kind = "quota_exceeded"
    http_status = 429
    code = "insufficient_quota"
    error_type = "insufficient_quota"
    _fields = ("provider",)
    provider: str | None


class BudgetExceededError(_RetryAfterMixin):
    """A deployment's spend budget is used up for the current window."""

    kind = "budget_exceeded"
    http_status = 429
    code = "insufficient_quota"
    error_type = "insufficient_quota"
    _fields = ("retry_after_s",)
    retry_after_s: float | None


class CircuitOpenError(_RetryAfterMixin):
    """The breaker for this upstream is open; calls fail fast until ``retry_at``.

    ``opened_at`` and ``retry_at`` are Unix timestamps in seconds.
    """

    kind = "circuit_open"
    http_status = 503
    code = "circuit_open"
    _fields = ("provider", "opened_at", "retry_at", "retry_after_s")
    provider: str | None
    opened_at: float | None
    retry_at: float | None
    retry_after_s: float | None


class CapacityExhaustedError(_RetryAfterMixin):
    """No capacity: the queue is full, or the deployment's policy is ``reject``."""

    kind = "capacity_exhausted"
    http_status = 503
    code = "capacity_exhausted"
    _fields = ("retry_after_s",)
    retry_after_s: float | None


class DrainingError(CapacityExhaustedError):
    """The deployment or gateway is shutting down and takes no new requests."""

    kind = "draining"
    code = "draining"


class ShuttingDownError(DrainingError):
    """The gateway is shutting down and its ``shutdown_grace`` ran out for this request
    (a stream cut by it ends with this error as its last event)."""

    kind = "shutting_down"
    code = "shutting_down"


class DeploymentFailedError(CapacityExhaustedError):
    """The deployment is ``failed`` (past its restart intensity, or it could not start).

    Permanent until it is deployed again: a retry cannot fix it (``x-should-retry:
    false``); a fallback may still serve the request.
    """

    kind = "deployment_failed"
    code = "deployment_failed"


class DeviceOutOfMemoryError(CapacityExhaustedError):
    """A local model's device (a GPU) ran out of memory during a step.

    The sequences of that step fail with it; the model frees its batch and the cached
    device memory and keeps serving, so a retry (or a fallback) may succeed. The message
    says what to lower: ``serving.max_concurrent``, ``max_tokens``, the dtype. A capacity
    error (503 with ``x-should-retry: true``), not a broken session: nothing is rebuilt.
    """

    kind = "device_out_of_memory"
    code = "device_out_of_memory"


class ContentFilteredError(InferenceError):
    """The provider's content filter refused the prompt or the answer."""

    kind = "content_filtered"
    http_status = 400
    code = "content_filter"
    error_type = "invalid_request_error"
    _fields = ("reason",)
    reason: str | None


class ContextLengthExceededError(InferenceError):
    """The prompt plus ``max_tokens`` does not fit the model's context window."""

    kind = "context_length_exceeded"
    http_status = 400
    code = "context_length_exceeded"
    error_type = "invalid_request_error"
    _fields = ("tokens", "max_tokens")
    tokens: int | None
    max_tokens: int | None


class BadRequestError(InferenceError):
    """The request is invalid; ``param`` names the offending field when known."""

    kind = "bad_request"
    http_status = 400
    error_type = "invalid_request_error"
    _fields = ("param",)
    param: str | None


class UnsupportedParameterError(BadRequestError):
    """The request asks for a feature the target cannot honour; ``param`` names it.

    Raised instead of answering while silently ignoring the feature (a front door that
    cannot translate ``response_format``, ``tools``, ``n``, a content type, …).
    """

    kind = "unsupported_parameter"
    code = "unsupported_parameter"


class PayloadTooLargeError(InferenceError):
    """The request body is larger than the gateway accepts."""

    kind = "payload_too_large"
    http_status = 413
    error_type = "invalid_request_error"
    _fields = ("limit_bytes",)
    limit_bytes: int | None


class UnauthorizedError(InferenceError):
    """Missing or wrong credentials (ours or the provider's)."""

    kind = "unauthorized"
    http_status = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


class ForbiddenError(InferenceError):
    """The credentials are valid but not allowed to do this."""

    kind = "forbidden"
    http_status = 403
    error_type = "permission_error"


class ModelNotAllowedError(ForbiddenError):
    """The gateway key is valid but its tenant (``[[key]].models``) may not use the model."""

    kind = "model_not_allowed"
    code = "model_not_allowed"
    _fields = ("model",)


class NotFoundError(InferenceError):
    """No deployment (or upstream model) by that name."""

    kind = "not_found"
    http_status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"
    _fields = ("model",)
    model: str | None


class NetworkError(InferenceError):
    """Could not reach the upstream, or the connection broke."""

    kind = "network"
    retryable = True
    counts_as_circuit_failure = True
    http_status = 502
    code = "upstream_error"


class ServerError(InferenceError):
    """The upstream answered with a 5xx (or an overloaded error event)."""

    kind = "server_error"
    retryable = True
    counts_as_circuit_failure = True
    http_status = 502
    code = "upstream_error"
    _fields = ("status", "body")
    status: int | None
    body: str | None


class MalformedStreamError(InferenceError):
    """The upstream sent bytes that are not the protocol it promised."""

    kind = "malformed_stream"
    retryable = True
    counts_as_circuit_failure = True
    http_status = 502
    code = "upstream_error"


class RequestTimeoutError(InferenceError):
    """A deadline passed: ``phase`` is ``"queue"``, ``"first_byte"`` or ``"read"``."""

    kind = "timeout"
    retryable = True
    counts_as_circuit_failure = True
    http_status = 504
    code = "timeout"
    _fields = ("elapsed_s", "phase")
    elapsed_s: float | None
    phase: str | None


class SessionPoisonedError(InferenceError):
    """The runner's session (a CUDA context, a model) broke; it is being rebuilt."""

    kind = "session_poisoned"
    http_status = 503
    code = "session_poisoned"


class StateUnavailableError(_RetryAfterMixin):
    """The shared state backend (Redis) cannot be reached and ``state.on_unavailable``
    is ``fail_closed``: limits cannot be checked, so the request is not admitted."""

    kind = "state_unavailable"
    http_status = 503
    code = "state_unavailable"
    _fields = ("retry_after_s",)
    retry_after_s: float | None


class InternalError(InferenceError):
    """A bug in atomr-infer or a runner. Please report it."""

    kind = "internal"


class ConfigError(ValueError):
    """Configuration is invalid. ``problems`` lists ``(path, message)`` pairs.

    ``str(error)`` prints one line per problem, each naming its key path, e.g.
    ``deployment[1].serving.max_concurrent: must be >= 1 (got 0)``.
    """

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.problems]
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} configuration problems:\n" + "\n".join(f"  {ln}" for ln in lines)


class RuntimeNotInstalledError(ConfigError):
    """A deployment names a runtime whose plugin is not installed."""

    def __init__(self, path: str, runtime: str, package: str) -> None:
        self.runtime = runtime
        self.package = package
        super().__init__(
            [(path, f"runtime {runtime!r} is not installed: run `pip install {package}`")]
        )
