"""atomr-infer testkit: mock runtime, runner contract suite, mock provider servers."""

from __future__ import annotations

from ._mock_anthropic import (
    MockAnthropicServer as MockAnthropicServer,
    mock_anthropic as mock_anthropic,
)
from ._mock_gemini import MockGeminiServer as MockGeminiServer, mock_gemini as mock_gemini
from ._mock_openai import MockOpenAIServer as MockOpenAIServer, mock_openai as mock_openai
from ._mock_otlp import (
    MockOTLPCollector as MockOTLPCollector,
    mock_otlp_collector as mock_otlp_collector,
)
from ._mock_runner import (
    MOCK_PRICES as MOCK_PRICES,
    MockConfig as MockConfig,
    MockCounters as MockCounters,
    MockReplicaCrash as MockReplicaCrash,
    MockRunner as MockRunner,
    mock_runtime_plugin as mock_runtime_plugin,
)
from ._mock_server import (
    Fault as Fault,
    JSONReply as JSONReply,
    MockProviderServer as MockProviderServer,
    RecordedRequest as RecordedRequest,
    StreamReply as StreamReply,
    open_mock_server as open_mock_server,
    sse_frame as sse_frame,
)
from ._schema import schema_answer as schema_answer, schema_instance as schema_instance
from ._shell import (
    MOCK_PROVIDERS as MOCK_PROVIDERS,
    mock_banner as mock_banner,
    run_mock as run_mock,
    serve_mock as serve_mock,
)

__all__: list[str] = [
    "MOCK_PRICES",
    "MOCK_PROVIDERS",
    "Fault",
    "JSONReply",
    "MockAnthropicServer",
    "MockConfig",
    "MockCounters",
    "MockGeminiServer",
    "MockOTLPCollector",
    "MockOpenAIServer",
    "MockProviderServer",
    "MockReplicaCrash",
    "MockRunner",
    "RecordedRequest",
    "StreamReply",
    "mock_anthropic",
    "mock_banner",
    "mock_gemini",
    "mock_openai",
    "mock_otlp_collector",
    "mock_runtime_plugin",
    "open_mock_server",
    "run_mock",
    "schema_answer",
    "schema_instance",
    "serve_mock",
    "sse_frame",
]
