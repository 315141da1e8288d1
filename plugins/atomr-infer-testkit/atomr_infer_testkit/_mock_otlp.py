"""A stand-in OpenTelemetry collector: OTLP/HTTP on loopback, recording what it receives.

::

    async with mock_otlp_collector() as collector:
        # point OTEL_EXPORTER_OTLP_ENDPOINT or [telemetry] endpoint at collector.url
        ...
        collector.span_names()      # decoded from the protobuf bodies received

It answers every export with 200 (faults can be queued like on any mock server), so an
exporter pays a real HTTP round trip to loopback: what a benchmark of tracing wants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ._mock_server import JSONReply, MockProviderServer, RecordedRequest, open_mock_server

__all__ = ["MockOTLPCollector", "mock_otlp_collector"]


class MockOTLPCollector(MockProviderServer):
    """``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs``, each answered 200."""

    provider = "otlp"

    def __init__(self) -> None:
        super().__init__()
        for signal in ("traces", "metrics", "logs"):
            self.add_route("POST", f"/v1/{signal}", self._accept)

    async def _accept(self, request: RecordedRequest) -> JSONReply:
        return JSONReply(status=200, body={})

    def exports(self, signal: str) -> list[RecordedRequest]:
        """The export requests received for ``signal`` (``"traces"``, ``"metrics"``)."""
        return [r for r in self.requests if r.path == f"/v1/{signal}"]

    def spans(self) -> list[Any]:
        """Every span received, decoded (needs ``opentelemetry-proto``)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        found = []
        for request in self.exports("traces"):
            message = ExportTraceServiceRequest()
            message.ParseFromString(request.body)
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    found.extend(scope.spans)
        return found

    def span_names(self) -> list[str]:
        return [span.name for span in self.spans()]


@asynccontextmanager
async def mock_otlp_collector() -> AsyncIterator[MockOTLPCollector]:
    """Serve a :class:`MockOTLPCollector` on loopback; ``collector.url`` is its base URL."""
    async with open_mock_server(MockOTLPCollector()) as collector:
        yield collector
