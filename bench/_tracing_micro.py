"""The tracing work of one request alone, in-process: ``Telemetry`` with the SDK's batch
processor and a null exporter (no network), 5000 requests' spans and metric records.

    .venv/bin/python bench/_tracing_micro.py [REQUESTS]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from atomr_infer_core import ExecuteBatch, FinishReason, Message, TokenChunk, TokenUsage
from atomr_infer_runtimes._telemetry import Telemetry


class _Null(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def main(requests: int) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Null()))
    telemetry = Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )
    batch = ExecuteBatch(
        request_id="r", model="chat", messages=(Message(role="user", content="hi"),)
    )
    observer = telemetry.observer("openai")
    usage = TokenUsage(input_tokens=5, output_tokens=8)
    token = TokenChunk(text_delta="x")
    last = TokenChunk(finish_reason=FinishReason.STOP, usage=usage)
    started = time.perf_counter()
    for _ in range(requests):
        trace = telemetry.start_request(batch, 0.0)
        attempt = trace.attempt("chat", "openai", "gpt-4o-mini", 0)
        telemetry.end_span(trace.child("atomr.admission", {"atomr.deployment": "chat"}), None)
        telemetry.traceparent_of(attempt)
        observer.upstream_attempt(batch, 1).finish(None)
        trace.first_token(0.01)
        for _ in range(7):
            trace.chunk(token)
        trace.chunk(last)
        telemetry.end_span(attempt, None)
        trace.finish(None, deployment="chat", usage=usage, now=0.1)
    elapsed = time.perf_counter() - started
    tracer_provider.shutdown()
    print(f"{elapsed / requests * 1e6:.0f} us of tracing per request (4 spans, 5 metric records)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
