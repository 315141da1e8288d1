"""atomr-infer remote core: sans-IO state machines and their thin trio/httpx shells."""

from __future__ import annotations

from ._backoff import compute_backoff as compute_backoff, parse_retry_after as parse_retry_after
from ._breaker import (
    BreakerCore as BreakerCore,
    BreakerPermit as BreakerPermit,
    BreakerStatistics as BreakerStatistics,
    CircuitBreaker as CircuitBreaker,
)
from ._bucket import RollingWindow as RollingWindow, TokenBucket as TokenBucket
from ._classify import (
    classify_http_status as classify_http_status,
    error_message as error_message,
    parse_error_body as parse_error_body,
)
from ._config import RemoteConfig as RemoteConfig
from ._engine import (
    AttemptObserver as AttemptObserver,
    AttemptWatch as AttemptWatch,
    EngineStatistics as EngineStatistics,
    Provider as Provider,
    ProviderRequest as ProviderRequest,
    RemoteEngine as RemoteEngine,
    StreamParser as StreamParser,
)
from ._fair import FairQueue as FairQueue
from ._http import (
    HttpClientOptions as HttpClientOptions,
    encode_json_body as encode_json_body,
    map_http_errors as map_http_errors,
    open_http_client as open_http_client,
    redacted_url as redacted_url,
)
from ._limiter import (
    RateLimiter as RateLimiter,
    RateLimiterStatistics as RateLimiterStatistics,
    RateLimitPermit as RateLimitPermit,
)
from ._queue import (
    BoundedPriorityQueue as BoundedPriorityQueue,
    PriorityHeap as PriorityHeap,
    QueueStatistics as QueueStatistics,
)
from ._retry import RetryDecision as RetryDecision, RetryEngine as RetryEngine
from ._runner import (
    EngineRunner as EngineRunner,
    RemoteRuntimeConfig as RemoteRuntimeConfig,
    registers as registers,
    remote_plugin as remote_plugin,
    upstream_model as upstream_model,
)
from ._session import (
    CallableCredential as CallableCredential,
    CredentialProvider as CredentialProvider,
    EnvCredential as EnvCredential,
    FileCredential as FileCredential,
    RemoteSession as RemoteSession,
    SessionSnapshot as SessionSnapshot,
    StaticCredential as StaticCredential,
    credential_problem as credential_problem,
    open_remote_session as open_remote_session,
)
from ._sse import SSEDecoder as SSEDecoder, SSEEvent as SSEEvent, aiter_sse as aiter_sse
from ._state import (
    MemorySpendWindow as MemorySpendWindow,
    MemoryStateBackend as MemoryStateBackend,
    SpendLog as SpendLog,
    SpendWindow as SpendWindow,
    StateBackend as StateBackend,
    open_state_backend as open_state_backend,
)

__all__: list[str] = [
    "BoundedPriorityQueue",
    "BreakerCore",
    "BreakerPermit",
    "BreakerStatistics",
    "CallableCredential",
    "CircuitBreaker",
    "CredentialProvider",
    "EngineRunner",
    "EngineStatistics",
    "EnvCredential",
    "FairQueue",
    "FileCredential",
    "HttpClientOptions",
    "MemorySpendWindow",
    "MemoryStateBackend",
    "PriorityHeap",
    "Provider",
    "ProviderRequest",
    "QueueStatistics",
    "RateLimitPermit",
    "RateLimiter",
    "RateLimiterStatistics",
    "RemoteConfig",
    "RemoteEngine",
    "RemoteRuntimeConfig",
    "RemoteSession",
    "RetryDecision",
    "RetryEngine",
    "RollingWindow",
    "SSEDecoder",
    "SSEEvent",
    "SessionSnapshot",
    "SpendLog",
    "SpendWindow",
    "StateBackend",
    "StaticCredential",
    "StreamParser",
    "TokenBucket",
    "aiter_sse",
    "classify_http_status",
    "compute_backoff",
    "credential_problem",
    "encode_json_body",
    "error_message",
    "map_http_errors",
    "open_http_client",
    "open_remote_session",
    "open_state_backend",
    "parse_error_body",
    "parse_retry_after",
    "redacted_url",
    "registers",
    "remote_plugin",
    "upstream_model",
]
