"""atomr-infer testkit: mock runtime, runner contract suite, mock provider servers."""

from __future__ import annotations

from ._mock_anthropic import (
    MockAnthropicServer as MockAnthropicServer,
    mock_anthropic as mock_anthropic,
)
from ._mock_gemini import MockGeminiServer as MockGeminiServer, mock_gemini as mock_gemini
from ._mock_openai import MockOpenAIServer as MockOpenAIServer, mock_openai as mock_openai
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

__all__: list[str] = [
    "MOCK_PRICES",
    "Fault",
    "JSONReply",
    "MockAnthropicServer",
    "MockConfig",
    "MockCounters",
    "MockGeminiServer",
    "MockOpenAIServer",
    "MockProviderServer",
    "MockReplicaCrash",
    "MockRunner",
    "RecordedRequest",
    "StreamReply",
    "mock_anthropic",
    "mock_gemini",
    "mock_openai",
    "mock_runtime_plugin",
    "open_mock_server",
    "schema_answer",
    "schema_instance",
    "sse_frame",
]
