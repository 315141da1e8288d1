"""``/metrics`` read back with the Prometheus parser: names, types, and counts that add up."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import mock_runtime_plugin

HI = [{"role": "user", "content": "hi"}]

CONFIG = {
    "cluster": {"bind": "127.0.0.1:0"},
    "deployment": [
        {
            "name": "chat",
            "model": "mock-small",
            "runtime": "mock",
            "runtime_config": {"chunks": ["a", "b", "c", "d", "e"], "chunk_delay": "10ms"},
        },
        {
            "name": "broken",
            "model": "mock-small",
            "runtime": "mock",
            "runtime_config": {"fail_with": "server_error"},
        },
    ],
}


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family: Any, sample_name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in family.samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def _scrape_after_traffic(ok: int, failed: int, streamed: int) -> str:
    plugin = mock_runtime_plugin()
    async with (
        open_cluster(load_config(CONFIG), plugins=[plugin], load_entry_points=False) as cluster,
        open_gateway(cluster) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        for _ in range(ok):
            reply = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
            assert reply.status_code == 200
        for _ in range(streamed):
            body = {"model": "chat", "messages": HI, "stream": True}
            reply = await http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200
        for _ in range(failed):
            body = {"model": "broken", "messages": HI}
            reply = await http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 502
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    return scraped.text


async def test_metrics_parse_with_counters_typed_and_counted() -> None:
    text = await _scrape_after_traffic(ok=3, failed=2, streamed=1)
    families = _families(text)
    counters = {name for name, f in families.items() if f.type == "counter"}
    assert {
        "atomr_requests",
        "atomr_tokens_in",
        "atomr_tokens_out",
        "atomr_cost_usd",
        "atomr_upstream_retries",
        "atomr_fallbacks",
        "atomr_replica_restarts",
    } <= counters
    # every counter sample is exposed as _total, and none has a _created twin
    for name in counters:
        assert {s.name for s in families[name].samples} <= {f"{name}_total"}
    assert "_created" not in text
    requests = families["atomr_requests"]
    assert _value(requests, "atomr_requests_total") == 6
    assert _value(requests, "atomr_requests_total", deployment="chat", status="ok") == 4
    assert (
        _value(requests, "atomr_requests_total", deployment="broken", error_kind="server_error")
        == 2
    )
    assert families["atomr_in_flight"].type == "gauge"
    assert families["atomr_time_to_first_token_seconds"].type == "histogram"


async def test_tpot_histogram_model_label_and_process_metrics() -> None:
    text = await _scrape_after_traffic(ok=2, failed=0, streamed=0)
    families = _families(text)
    tpot = families["atomr_time_per_output_token_seconds"]
    assert tpot.type == "histogram"
    labels = {"deployment": "chat", "model": "mock-small"}
    assert _value(tpot, "atomr_time_per_output_token_seconds_count", **labels) == 2
    assert {s.labels["model"] for s in tpot.samples} == {"mock-small"}
    # five chunks 10 ms apart: four gaps of 10 ms after the first token
    mean = _value(tpot, "atomr_time_per_output_token_seconds_sum", **labels) / 2
    assert 0.008 < mean < 0.5
    info = families["atomr_deployment_info"]
    assert {
        (s.labels["deployment"], s.labels["model"], s.labels["runtime"]) for s in info.samples
    } == {
        ("chat", "mock-small", "mock"),
        ("broken", "mock-small", "mock"),
    }
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["process_cpu_seconds"].type == "counter"
