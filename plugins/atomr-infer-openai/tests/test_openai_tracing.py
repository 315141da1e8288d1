"""OpenTelemetry spans and GenAI metrics of requests through the gateway to mock OpenAI servers.

Spans are captured with the SDK's in-memory exporter; the mock servers record the
``traceparent`` each upstream request carried.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import atomr_infer_openai._plugin as openai_plugin
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes._telemetry import Telemetry
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockOpenAIServer, mock_openai

HI = [{"role": "user", "content": "hello world"}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Captured:
    def __init__(self, capture_content: bool = False) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[self.metrics]),
            capture_content=capture_content,
        )

    def finished(self) -> list[Any]:
        return list(self.spans.get_finished_spans())

    def named(self, prefix: str) -> list[Any]:
        return [s for s in self.finished() if s.name.startswith(prefix)]

    def request_span(self) -> Any:
        (span,) = [s for s in self.finished() if s.kind is SpanKind.SERVER]
        return span

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


def _deployment(name: str, server: MockOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": "gpt-4o-mini",
        "runtime_config": {"base_url": f"{server.url}/v1", "api_key": "sk-mock"},
        "retry": {"jitter": "none", "initial_backoff": "10ms"},
        **extra,
    }


@asynccontextmanager
async def _gateway(captured: Captured, *deployments: dict[str, Any]) -> AsyncIterator[str]:
    config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": list(deployments)})
    async with (
        open_cluster(
            config,
            plugins=[openai_plugin],
            load_entry_points=False,
            telemetry=captured.telemetry,
        ) as cluster,
        open_gateway(cluster) as url,
    ):
        yield url


async def _chat(url: str, model: str = "chat", **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as http:
        return await http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": HI, **body},
            headers={"traceparent": PARENT},
        )


def _parent_of(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


async def test_a_plain_request_is_a_genai_span_continuing_the_callers_trace() -> None:
    captured = Captured()
    async with mock_openai() as server, _gateway(captured, _deployment("chat", server)) as url:
        reply = await _chat(url, max_tokens=50, temperature=0.5)
    assert reply.status_code == 200
    span = captured.request_span()
    assert span.name == "chat chat"
    assert dict(span.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "chat",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.5,
        "atomr.request_id": reply.headers["x-request-id"],
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.provider.name": "openai",
        "atomr.deployment": "chat",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 2,
        "gen_ai.usage.output_tokens": 3,
    }
    # the incoming traceparent is continued
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    (admission,) = captured.named("atomr.admission")
    (attempt,) = captured.named("atomr.attempt")
    (upstream,) = [s for s in captured.finished() if s.kind is SpanKind.CLIENT]
    assert admission.parent.span_id == attempt.parent.span_id == span.context.span_id
    assert upstream.parent.span_id == attempt.context.span_id
    assert upstream.name == "chat gpt-4o-mini"
    assert upstream.attributes["atomr.retry"] is False
    # the upstream request carried the upstream span's context: the provider joins the trace
    (sent,) = server.requests
    assert _parent_of(sent.headers["traceparent"]) == (TRACE_ID, f"{upstream.context.span_id:016x}")
    assert "gen_ai.input.messages" not in span.attributes
    assert "hello world" not in json.dumps([dict(s.attributes) for s in captured.finished()])


async def test_a_retried_request_has_one_client_span_per_upstream_try(
    autojump_clock: trio.testing.MockClock,
) -> None:
    captured = Captured()
    async with mock_openai() as server, _gateway(captured, _deployment("chat", server)) as url:
        server.inject_5xx(2)
        reply = await _chat(url)
    assert reply.status_code == 200
    tries = sorted(
        (s for s in captured.finished() if s.kind is SpanKind.CLIENT),
        key=lambda s: s.attributes["atomr.upstream_attempt"],
    )
    assert [s.attributes["atomr.upstream_attempt"] for s in tries] == [1, 2, 3]
    assert [s.attributes["atomr.retry"] for s in tries] == [False, True, True]
    assert [s.status.status_code for s in tries] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [s.attributes.get("error.type") for s in tries] == ["server_error", "server_error", None]
    (attempt,) = captured.named("atomr.attempt")
    assert {s.parent.span_id for s in tries} == {attempt.context.span_id}
    # each try sent its own span as the parent
    sent = [_parent_of(r.headers["traceparent"])[1] for r in server.requests]
    assert sent == [f"{s.context.span_id:016x}" for s in tries]
    assert captured.request_span().status.status_code is StatusCode.UNSET


async def test_a_fallback_shows_as_a_second_attempt_span() -> None:
    captured = Captured()
    async with mock_openai() as broken, mock_openai() as healthy:
        primary = _deployment("chat", broken, fallbacks=["backup"], retry={"max_retries": 0})
        backup = _deployment("backup", healthy, model="gpt-4o")
        async with _gateway(captured, primary, backup) as url:
            broken.inject_5xx(1)
            reply = await _chat(url)
    assert reply.status_code == 200
    assert reply.headers["x-atomr-deployment"] == "backup"
    first, second = sorted(captured.named("atomr.attempt"), key=lambda s: s.start_time)
    assert (first.name, second.name) == ("atomr.attempt chat", "atomr.attempt backup")
    assert (first.attributes["atomr.fallback"], second.attributes["atomr.fallback"]) == (
        False,
        True,
    )
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["error.type"] == "server_error"
    span = captured.request_span()
    assert span.attributes["atomr.deployment"] == "backup"
    assert span.attributes["gen_ai.response.model"] == "gpt-4o"
    assert span.status.status_code is StatusCode.UNSET


async def test_a_stream_records_finish_reasons_usage_and_the_genai_metrics() -> None:
    captured = Captured(capture_content=True)
    async with mock_openai() as server, _gateway(captured, _deployment("chat", server)) as url:
        reply = await _chat(url, stream=True, stream_options={"include_usage": True})
    assert reply.status_code == 200
    assert reply.text.endswith("data: [DONE]\n\n")
    span = captured.request_span()
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert span.attributes["gen_ai.usage.output_tokens"] == 3
    assert json.loads(span.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hello world"}]}
    ]
    assert json.loads(span.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Echo: hello world"}]}
    ]
    tokens = {
        p.attributes["gen_ai.token.type"]: p.sum
        for p in captured.points("gen_ai.client.token.usage")
    }
    assert tokens == {"input": 2, "output": 3}
    (ttft,) = captured.points("gen_ai.server.time_to_first_token")
    (tpot,) = captured.points("gen_ai.server.time_per_output_token")
    assert ttft.count == tpot.count == 1
    assert ttft.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "gpt-4o-mini",
    }


async def test_a_failed_request_ends_its_span_with_the_error() -> None:
    captured = Captured()
    async with mock_openai() as server:
        async with _gateway(captured, _deployment("chat", server, retry={"max_retries": 0})) as url:
            server.inject_5xx(1)
            reply = await _chat(url)
            missing = await _chat(url, model="nope")
    assert (reply.status_code, missing.status_code) == (502, 404)
    failed, unknown = sorted(
        (s for s in captured.finished() if s.kind is SpanKind.SERVER), key=lambda s: s.start_time
    )
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "server_error"
    assert unknown.attributes["error.type"] == "not_found"
    durations = {
        p.attributes["error.type"]: p.count
        for p in captured.points("gen_ai.server.request.duration")
    }
    assert durations == {"server_error": 1, "not_found": 1}
    assert captured.points("gen_ai.client.token.usage") == []


@pytest.mark.parametrize("header", ["garbage", "01-" + TRACE_ID + "-00f067aa0ba902b7-01"])
async def test_an_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    captured = Captured()
    async with mock_openai() as server, _gateway(captured, _deployment("chat", server)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            reply = await http.post(
                "/v1/chat/completions",
                json={"model": "chat", "messages": HI},
                headers={"traceparent": header},
            )
    assert reply.status_code == 200
    span = captured.request_span()
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != TRACE_ID
