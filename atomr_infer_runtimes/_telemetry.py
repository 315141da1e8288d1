"""OpenTelemetry: a span per request in the GenAI conventions, and the GenAI metrics.

Optional (``pip install 'atomr-infer-trio[otel]'``) and off unless ``[telemetry] endpoint``
or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: then :func:`telemetry_from_config` builds a
:class:`Telemetry` exporting over OTLP/HTTP; otherwise nothing here imports
``opentelemetry`` and the request path pays one ``is None`` test.

Spans of one request::

    chat {model}                 SERVER  gen_ai.* request and response attributes
    ├── atomr.admission          INTERNAL  budget ▸ rate limit ▸ capacity wait, per deployment
    ├── atomr.attempt {name}     INTERNAL  one deployment tried (atomr.fallback on the later ones)
    │   └── chat {upstream}      CLIENT  each upstream request, retries included (atomr.retry)
    └── …

No span is ever made current: trio tasks share no context variables with the engine's
workers, so every span gets its parent explicitly and the trace travels as a W3C
``traceparent`` string (``ExecuteBatch.traceparent``, sent upstream by remote runtimes).
Message content is recorded only with ``capture_content`` (or
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from atomr_infer_core import ExecuteBatch, RequestKind, TelemetryConfig, TokenChunk, TokenUsage
from atomr_infer_core.errors import InferenceError

__all__ = ["RequestTrace", "Telemetry", "telemetry_from_config"]

log = logging.getLogger("atomr_infer.telemetry")

_OPERATIONS = {
    RequestKind.CHAT: "chat",
    RequestKind.COMPLETION: "text_completion",
    RequestKind.EMBEDDING: "embeddings",
}
# gen_ai.provider.name well-known values where ours differ
_PROVIDERS = {"gemini": "gcp.gemini", "azure": "azure.ai.openai"}
_CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5)
_TTFT_BUCKETS += (5.0, 7.5, 10.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


def provider_name(runtime: str) -> str:
    """``gen_ai.provider.name`` of a runtime (``gemini`` → ``gcp.gemini``)."""
    return _PROVIDERS.get(runtime, runtime)


def _error_type(error: BaseException) -> str:
    if isinstance(error, InferenceError):
        return error.kind
    return type(error).__qualname__


def _sampling_attributes(batch: ExecuteBatch) -> dict[str, Any]:
    sampling = batch.sampling
    found = {
        "gen_ai.request.max_tokens": sampling.max_tokens,
        "gen_ai.request.temperature": sampling.temperature,
        "gen_ai.request.top_p": sampling.top_p,
        "gen_ai.request.seed": sampling.seed,
        "gen_ai.request.presence_penalty": sampling.presence_penalty,
        "gen_ai.request.frequency_penalty": sampling.frequency_penalty,
    }
    out = {k: v for k, v in found.items() if v is not None}
    if sampling.stop:
        out["gen_ai.request.stop_sequences"] = list(sampling.stop)
    if sampling.n != 1:
        out["gen_ai.request.choice.count"] = sampling.n
    return out


def _input_messages(batch: ExecuteBatch) -> str:
    if batch.messages is not None:
        messages = [
            {
                "role": str(m.role),
                "parts": [{"type": "text", "content": m.text}],
            }
            for m in batch.messages
        ]
    elif batch.prompt is not None:
        messages = [{"role": "user", "parts": [{"type": "text", "content": batch.prompt}]}]
    else:
        messages = [
            {"role": "user", "parts": [{"type": "text", "content": text}]}
            for text in batch.inputs or ()
        ]
    return json.dumps(messages, ensure_ascii=False)


class Telemetry:
    """The tracer and GenAI instruments of one cluster.

    Built by :func:`telemetry_from_config`, or in code (tests: the SDK's in-memory
    exporter) from a ``TracerProvider`` and an optional ``MeterProvider``. ``shutdown``
    flushes and stops providers this object created.
    """

    def __init__(
        self,
        *,
        tracer_provider: Any,
        meter_provider: Any = None,
        capture_content: bool = False,
        owns_providers: bool = False,
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self.tracer = tracer_provider.get_tracer("atomr_infer")
        self.propagator = TraceContextTextMapPropagator()
        self.capture_content = capture_content
        self._providers = (tracer_provider, meter_provider) if owns_providers else ()
        self.token_usage = self.ttft = self.tpot = self.duration = None
        if meter_provider is not None:
            meter = meter_provider.get_meter("atomr_infer")
            self.token_usage = meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            )
            self.ttft = meter.create_histogram(
                "gen_ai.server.time_to_first_token",
                unit="s",
                description="Time to generate first token for successful responses.",
                explicit_bucket_boundaries_advisory=_TTFT_BUCKETS,
            )
            self.tpot = meter.create_histogram(
                "gen_ai.server.time_per_output_token",
                unit="s",
                description="Time per output token generated after the first token.",
                explicit_bucket_boundaries_advisory=_TPOT_BUCKETS,
            )
            self.duration = meter.create_histogram(
                "gen_ai.server.request.duration",
                unit="s",
                description="Generative AI server request duration.",
                explicit_bucket_boundaries_advisory=_TTFT_BUCKETS,
            )

    # -- trace context ------------------------------------------------------------------

    def context_of(self, traceparent: str | None) -> Any:
        """The OpenTelemetry context a ``traceparent`` string names (``None``: a new trace)."""
        if not traceparent:
            return None
        return self.propagator.extract({"traceparent": traceparent})

    def traceparent_of(self, span: Any) -> str | None:
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier.get("traceparent")

    def start_span(
        self, name: str, parent: Any, *, kind: str, attributes: Mapping[str, Any]
    ) -> Any:
        return self.tracer.start_span(
            name,
            context=parent,
            kind=getattr(self._trace.SpanKind, kind),
            attributes=dict(attributes),
        )

    def end_span(self, span: Any, error: BaseException | None) -> None:
        if error is not None:
            span.set_attribute("error.type", _error_type(error))
            message = error.message if isinstance(error, InferenceError) else type(error).__name__
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))
        span.end()

    # -- requests -----------------------------------------------------------------------

    def start_request(self, batch: ExecuteBatch, now: float) -> RequestTrace:
        """The span of one request (its parent: the batch's ``traceparent``, if any)."""
        return RequestTrace(self, batch, now)

    def observer(self, provider: str) -> UpstreamObserver:
        """The remote engines' ``AttemptObserver`` for a deployment of ``provider``."""
        return UpstreamObserver(self, provider_name(provider))

    def shutdown(self) -> None:
        """Flush and stop the providers this object created (blocking: run in a thread)."""
        for provider in self._providers:
            if provider is not None:
                provider.shutdown()


class RequestTrace:
    """One request's span and what it learns on the way (see the module docstring)."""

    def __init__(self, telemetry: Telemetry, batch: ExecuteBatch, now: float) -> None:
        self.t = telemetry
        self.operation = _OPERATIONS.get(batch.kind, str(batch.kind))
        self.arrival = now
        self.first_at: float | None = None
        self.finish_reasons: list[str] = []
        self.output: list[str] = [] if telemetry.capture_content else None  # type: ignore[assignment]
        attributes = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.request.model": batch.model,
            "atomr.request_id": batch.request_id,
            **_sampling_attributes(batch),
        }
        if batch.tenant:
            attributes["atomr.tenant"] = batch.tenant
        if telemetry.capture_content:
            attributes["gen_ai.input.messages"] = _input_messages(batch)
        self.span = telemetry.start_span(
            f"{self.operation} {batch.model}",
            telemetry.context_of(batch.traceparent),
            kind="SERVER",
            attributes=attributes,
        )
        self.context = telemetry._trace.set_span_in_context(self.span)
        self.provider: str | None = None
        self.response_model: str | None = None

    def child(self, name: str, attributes: Mapping[str, Any]) -> Any:
        return self.t.start_span(name, self.context, kind="INTERNAL", attributes=attributes)

    def attempt(self, deployment: str, provider: str, model: str, position: int) -> Any:
        """The span of trying ``deployment`` (position 0: the one asked for)."""
        self.provider = provider_name(provider)
        self.response_model = model
        return self.child(
            f"atomr.attempt {deployment}",
            {
                "atomr.deployment": deployment,
                "atomr.fallback": position > 0,
                "atomr.fallback.position": position,
                "gen_ai.provider.name": self.provider,
                "gen_ai.request.model": model,
            },
        )

    def first_token(self, now: float) -> None:
        self.first_at = now

    def chunk(self, chunk: TokenChunk) -> None:
        if chunk.finish_reason is not None:
            self.finish_reasons.append(str(chunk.finish_reason))
        if self.output is not None and chunk.text_delta:
            self.output.append(chunk.text_delta)

    def finish(
        self,
        error: BaseException | None,
        *,
        deployment: str | None,
        usage: TokenUsage | None,
        now: float,
    ) -> None:
        span, t = self.span, self.t
        base = {"gen_ai.operation.name": self.operation}
        if self.provider:
            base["gen_ai.provider.name"] = self.provider
        if self.response_model:
            base["gen_ai.response.model"] = self.response_model
            span.set_attribute("gen_ai.response.model", self.response_model)
        if self.provider:
            span.set_attribute("gen_ai.provider.name", self.provider)
        if deployment:
            span.set_attribute("atomr.deployment", deployment)
        if self.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", self.finish_reasons)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            if usage.cached_tokens:
                span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens)
            if usage.cache_creation_tokens:
                span.set_attribute(
                    "gen_ai.usage.cache_creation.input_tokens", usage.cache_creation_tokens
                )
        if self.output is not None and error is None:
            parts = [{"type": "text", "content": "".join(self.output)}]
            span.set_attribute(
                "gen_ai.output.messages",
                json.dumps([{"role": "assistant", "parts": parts}], ensure_ascii=False),
            )
        self._record_metrics(error, usage, now, base)
        t.end_span(span, error)

    def _record_metrics(
        self,
        error: BaseException | None,
        usage: TokenUsage | None,
        now: float,
        base: dict[str, Any],
    ) -> None:
        t = self.t
        if t.duration is None:
            return
        attributes = dict(base)
        if error is not None:
            attributes["error.type"] = _error_type(error)
        t.duration.record(now - self.arrival, attributes)
        if error is not None:
            return
        if self.first_at is not None:
            t.ttft.record(self.first_at - self.arrival, base)  # type: ignore[union-attr]
        if usage is not None:
            t.token_usage.record(usage.input_tokens, {**base, "gen_ai.token.type": "input"})  # type: ignore[union-attr]
            t.token_usage.record(usage.output_tokens, {**base, "gen_ai.token.type": "output"})  # type: ignore[union-attr]
            if usage.output_tokens > 1 and self.first_at is not None:
                per_token = (now - self.first_at) / (usage.output_tokens - 1)
                t.tpot.record(per_token, base)  # type: ignore[union-attr]


class _UpstreamWatch:
    __slots__ = ("_span", "_t", "traceparent")

    def __init__(self, telemetry: Telemetry, span: Any) -> None:
        self._t = telemetry
        self._span = span
        self.traceparent = telemetry.traceparent_of(span)

    def finish(self, error: BaseException | None) -> None:
        self._t.end_span(self._span, error)


class UpstreamObserver:
    """A CLIENT span per upstream request a remote engine sends (retries included)."""

    def __init__(self, telemetry: Telemetry, provider: str) -> None:
        self._t = telemetry
        self._provider = provider

    def upstream_attempt(self, batch: ExecuteBatch, number: int) -> _UpstreamWatch:
        operation = _OPERATIONS.get(batch.kind, str(batch.kind))
        span = self._t.start_span(
            f"{operation} {batch.model}",
            self._t.context_of(batch.traceparent),
            kind="CLIENT",
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": self._provider,
                "gen_ai.request.model": batch.model,
                "atomr.upstream_attempt": number,
                "atomr.retry": number > 1,
            },
        )
        return _UpstreamWatch(self._t, span)


def telemetry_from_config(
    config: TelemetryConfig, env: Mapping[str, str] | None = None
) -> Telemetry | None:
    """A Telemetry exporting over OTLP/HTTP when an endpoint is configured, else ``None``.

    ``[telemetry] endpoint`` wins over ``OTEL_EXPORTER_OTLP_ENDPOINT``; the SDK reads the
    other ``OTEL_*`` variables (headers, timeouts, per-signal endpoints) itself. Without
    the SDK installed, logs how to install it and returns ``None``.
    """
    env = os.environ if env is None else env
    endpoint = config.endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "telemetry: an OTLP endpoint is set but the OpenTelemetry SDK is not installed; "
            "run `pip install 'atomr-infer-trio[otel]'` (serving without tracing)"
        )
        return None
    base = config.endpoint.rstrip("/") if config.endpoint else None
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", config.service_name)})
    tracer_provider = TracerProvider(resource=resource)
    traces = OTLPSpanExporter(endpoint=f"{base}/v1/traces") if base else OTLPSpanExporter()
    tracer_provider.add_span_processor(BatchSpanProcessor(traces))
    metrics = OTLPMetricExporter(endpoint=f"{base}/v1/metrics") if base else OTLPMetricExporter()
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(metrics)]
    )
    capture = config.capture_content or env.get(_CAPTURE_ENV, "").lower() == "true"
    from atomr_infer_remote import redacted_url

    log.info(
        "telemetry: exporting traces and metrics over OTLP/HTTP to %s",
        redacted_url(base or endpoint),
    )
    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        capture_content=capture,
        owns_providers=True,
    )
