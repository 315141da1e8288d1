"""atomr-infer core: pure values and contracts (attrs, cattrs and the stdlib only).

Nothing here imports trio, httpx, quart, torch or onnxruntime; a test proves it.
"""

from __future__ import annotations

from . import errors as errors
from ._constraints import (
    OutputConstraint as OutputConstraint,
    ToolSpec as ToolSpec,
    output_constraint as output_constraint,
)
from ._deployment import (
    Budget as Budget,
    BudgetAction as BudgetAction,
    CapacityPolicy as CapacityPolicy,
    CircuitBreakerConfig as CircuitBreakerConfig,
    ClusterConfig as ClusterConfig,
    Config as Config,
    Deployment as Deployment,
    JitterKind as JitterKind,
    LogFormat as LogFormat,
    Quantile as Quantile,
    RateLimits as RateLimits,
    Replica as Replica,
    ReplicaRouting as ReplicaRouting,
    RetryPolicy as RetryPolicy,
    Seconds as Seconds,
    Serving as Serving,
    StateBackendKind as StateBackendKind,
    StateConfig as StateConfig,
    StateMode as StateMode,
    TelemetryConfig as TelemetryConfig,
    TenantKey as TenantKey,
    Timeouts as Timeouts,
    UnavailablePolicy as UnavailablePolicy,
)
from ._kinds import (
    ProviderKind as ProviderKind,
    RuntimeKind as RuntimeKind,
    TransportKind as TransportKind,
    infer_runtime as infer_runtime,
    register_model_patterns as register_model_patterns,
    unregister_model_patterns as unregister_model_patterns,
)
from ._local import (
    LOCAL_DECODER_FEATURES as LOCAL_DECODER_FEATURES,
    ResolvedSampling as ResolvedSampling,
    SamplingDefaults as SamplingDefaults,
    SequenceOutput as SequenceOutput,
    StepModel as StepModel,
    StopScanner as StopScanner,
    advance_sequence as advance_sequence,
    hold_tool_call as hold_tool_call,
    out_of_memory as out_of_memory,
    render_prompt as render_prompt,
    resolve_sampling as resolve_sampling,
)
from ._messages import (
    ContentPart as ContentPart,
    ExecuteBatch as ExecuteBatch,
    ImageBase64Part as ImageBase64Part,
    ImageUrlPart as ImageUrlPart,
    Message as Message,
    Passthrough as Passthrough,
    Priority as Priority,
    RequestKind as RequestKind,
    Role as Role,
    SamplingParams as SamplingParams,
    TextPart as TextPart,
    estimate_tokens as estimate_tokens,
)
from ._pipeline import (
    BalanceStrategy as BalanceStrategy,
    EscalateWhen as EscalateWhen,
    Pipeline as Pipeline,
    PipelineKind as PipelineKind,
)
from ._plugin import (
    RunnerContext as RunnerContext,
    RuntimePlugin as RuntimePlugin,
    hookimpl as hookimpl,
)
from ._pricing import ModelPrice as ModelPrice, PriceTable as PriceTable
from ._runner import (
    ModelRunner as ModelRunner,
    RunHandle as RunHandle,
    SessionRebuildCause as SessionRebuildCause,
)
from ._secret import Secret as Secret
from ._tokens import (
    Choice as Choice,
    FinishReason as FinishReason,
    TokenChunk as TokenChunk,
    Tokens as Tokens,
    TokensBuilder as TokensBuilder,
    TokenUsage as TokenUsage,
)
from .errors import ConfigError as ConfigError, InferenceError as InferenceError

#: the version of the core distribution, ``atomr-infer-trio`` (every plugin shares it)
__version__ = "0.2.0"
#: the core distribution's name on the package index
DISTRIBUTION = "atomr-infer-trio"

__all__ = [
    "LOCAL_DECODER_FEATURES",
    "BalanceStrategy",
    "Budget",
    "BudgetAction",
    "CapacityPolicy",
    "Choice",
    "CircuitBreakerConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ContentPart",
    "Deployment",
    "EscalateWhen",
    "ExecuteBatch",
    "FinishReason",
    "ImageBase64Part",
    "ImageUrlPart",
    "InferenceError",
    "JitterKind",
    "LogFormat",
    "Message",
    "ModelPrice",
    "ModelRunner",
    "OutputConstraint",
    "Passthrough",
    "Pipeline",
    "PipelineKind",
    "PriceTable",
    "Priority",
    "ProviderKind",
    "Quantile",
    "RateLimits",
    "Replica",
    "ReplicaRouting",
    "RequestKind",
    "ResolvedSampling",
    "RetryPolicy",
    "Role",
    "RunHandle",
    "RunnerContext",
    "RuntimeKind",
    "RuntimePlugin",
    "SamplingDefaults",
    "SamplingParams",
    "Seconds",
    "Secret",
    "SequenceOutput",
    "Serving",
    "SessionRebuildCause",
    "StateBackendKind",
    "StateConfig",
    "StateMode",
    "StepModel",
    "StopScanner",
    "TelemetryConfig",
    "TenantKey",
    "TextPart",
    "Timeouts",
    "TokenChunk",
    "TokenUsage",
    "Tokens",
    "TokensBuilder",
    "ToolSpec",
    "TransportKind",
    "UnavailablePolicy",
    "advance_sequence",
    "errors",
    "estimate_tokens",
    "hold_tool_call",
    "hookimpl",
    "infer_runtime",
    "out_of_memory",
    "output_constraint",
    "register_model_patterns",
    "render_prompt",
    "resolve_sampling",
    "unregister_model_patterns",
]


def _fixup_module_metadata() -> None:
    import attrs

    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith(__name__ + "._"):
            if attrs.has(obj):
                attrs.resolve_types(obj)  # while the defining module's globals still apply
            obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
