"""Telemetry switched on by configuration: OTLP export to a collector, and off by default."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from atomr_infer_core import TelemetryConfig
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes._telemetry import telemetry_from_config
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import mock_otlp_collector, mock_runtime_plugin

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]


def _config(**telemetry: Any) -> Any:
    return load_config(
        {
            "cluster": {"bind": "127.0.0.1:0"},
            "telemetry": telemetry,
            "deployment": [
                {
                    "name": "chat",
                    "model": "mock-small",
                    "runtime": "mock",
                    "runtime_config": {"chunks": ["a", "b"], "input_tokens": 3},
                }
            ],
        }
    )


async def _one_request(config: Any) -> None:
    async with (
        open_cluster(config, plugins=[mock_runtime_plugin()], load_entry_points=False) as cluster,
        open_gateway(cluster) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        assert cluster.telemetry is not None
        reply = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
        assert reply.status_code == 200


async def test_the_config_endpoint_exports_spans_and_metrics_over_otlp() -> None:
    async with mock_otlp_collector() as collector:
        await _one_request(_config(endpoint=collector.url, service_name="gw-test"))
        # leaving the cluster flushed both providers to the collector
        names = sorted(collector.span_names())
        metrics = collector.exports("metrics")
        traces = collector.exports("traces")
    assert names == ["atomr.admission", "atomr.attempt chat", "chat chat"]
    assert metrics, "the GenAI metrics were not exported"
    assert traces[0].headers["content-type"] == "application/x-protobuf"
    assert b"gw-test" in traces[0].body  # service.name on the resource


async def test_the_environment_endpoint_switches_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async with mock_otlp_collector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        await _one_request(_config())
        names = collector.span_names()
    assert "chat chat" in names


def test_without_an_endpoint_there_is_no_telemetry() -> None:
    assert telemetry_from_config(TelemetryConfig(), env={}) is None


def test_an_endpoint_without_the_sdk_logs_the_install_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="atomr_infer.telemetry"):
        made = telemetry_from_config(TelemetryConfig(endpoint="http://127.0.0.1:1"), env={})
    assert made is None
    assert "pip install 'atomr-infer-trio[otel]'" in caplog.text


OFF_PROBE = """
import sys, trio, httpx
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import mock_runtime_plugin

async def main():
    config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": [
        {"name": "chat", "model": "mock", "runtime": "mock"}]})
    async with open_cluster(config, plugins=[mock_runtime_plugin()], load_entry_points=False) as c:
        async with open_gateway(c) as url, httpx.AsyncClient(base_url=url) as http:
            headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            r = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text
    print("TELEMETRY", c.telemetry, "LOADED", sorted(m for m in sys.modules if m.startswith("opentelemetry")))

trio.run(main)
"""


@pytest.mark.slow
def test_tracing_off_imports_no_opentelemetry() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", OFF_PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "TELEMETRY None LOADED []" in result.stdout
