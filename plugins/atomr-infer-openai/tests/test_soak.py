"""Soak: a few thousand mixed requests through the gateway under a ~20% fault mix.

Real parts: the testkit's mock OpenAI server (real HTTP, fault injection), the real
Cluster with the openai runtime, the gateway on hypercorn, httpx clients. Faults: 5xx,
429 with Retry-After, drops mid-stream, slow first byte, malformed chunks, and clients
that leave (before output and mid-stream).

Asserted: every request ends (none hung); each ends as the full answer or a typed error
(an OpenAI error body, or one SSE error event closing a stream), never a 500; no text is
repeated (a cut stream is a prefix of the answer); the replica never crashes; no upstream
stream is left open and the gateway holds no client socket; the process's fds come back
to the warm-up baseline while serving (within ``FD_SLACK``) and to the start exactly
once all is stopped; its RSS grows by less than ``RSS_SLACK_MIB``;
``atomr_requests_total`` equals the requests sent.

Run with ``-s`` to see the figures (docs/reliability.md quotes them).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import random
import time
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import atomr_infer_openai._plugin as openai_plugin
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockOpenAIServer, open_mock_server

REQUESTS = int(os.environ.get("SOAK_REQUESTS", "2000"))
WARMUP = 200
CONCURRENCY = 32
FAULT_RATE = 0.2
#: the upstream pool may hold other (idle) connections after the soak than after the
#: warm-up: each is two fds here (the mock server runs in this process)
FD_SLACK = 2 * CONCURRENCY
RSS_SLACK_MIB = 40.0


class CountingServer(MockOpenAIServer):
    """Counts the streams it is sending right now (none may be left at the end)."""

    def __init__(self) -> None:
        super().__init__()
        self.open_streams = 0

    async def _stream(self, send: Any, reply: Any, fault: Any) -> None:
        self.open_streams += 1
        try:
            await super()._stream(send, reply, fault)
        finally:
            self.open_streams -= 1


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _gateway_sockets(port: int) -> int:
    """Sockets of the gateway's port in this network namespace that are not listening:
    with every client gone there must be none (no CLOSE_WAIT, no lingering keep-alive)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] not in ("0A", "06"):  # LISTEN, TIME_WAIT
                    count += 1
    return count


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _inject(server: CountingServer, rng: random.Random) -> str | None:
    """Queue one fault with probability FAULT_RATE; return its name."""
    if rng.random() >= FAULT_RATE:
        return None
    kind = rng.choice(["5xx", "429", "drop", "slow", "malformed", "leave"])
    if kind == "5xx":
        server.inject_5xx(status=rng.choice([500, 502, 503]))
    elif kind == "429":
        server.inject_status(429, headers={"retry-after-ms": "20"})
    elif kind == "drop":
        server.drop_after(rng.randint(0, 2))
    elif kind == "slow":
        server.slow_first_byte(0.05)
    elif kind == "malformed":
        server.malformed_after(rng.randint(0, 2))
    return kind


def _events(body: bytes) -> list[Any]:
    out: list[Any] = []
    for line in body.decode().split("\n"):
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _typed_error(payload: Any) -> bool:
    error = payload.get("error") if isinstance(payload, dict) else None
    return (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and error.get("type") in ("invalid_request_error", "server_error")
        and set(error) == {"message", "type", "param", "code"}
    )


async def _one(http: httpx.AsyncClient, i: int, stream: bool, leave: bool) -> str:
    prompt = f"soak {i} words"
    expected = f"Echo: {prompt}"
    body = {"model": "chat", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    if leave:
        await _leave(str(http.base_url), body, stream)
        return "client_left"
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code != 500, response.text
    if response.status_code != 200:
        assert _typed_error(response.json()), response.text
        return f"error_{response.status_code}"
    if not stream:
        assert response.json()["choices"][0]["message"]["content"] == expected
        return "ok"
    events = _events(response.content)
    text = "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and "choices" in e
        for c in e["choices"]
    )
    if events and events[-1] == "[DONE]":
        assert text == expected, (text, expected)
        return "ok"
    assert _typed_error(events[-1]), events[-1:]
    assert expected.startswith(text), (text, expected)  # a prefix: nothing repeated
    return "error_mid_stream"


async def _leave(url: str, body: dict[str, Any], stream: bool) -> None:
    """Send the whole request, then go away: at once (before any output) for a unary
    request, after the first event for a stream. A raw socket, so the request surely
    reached the gateway (and must be counted) before the client left."""
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    raw = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    )
    connection = await trio.open_tcp_stream("127.0.0.1", port)
    async with connection:
        await connection.send_all(head.encode() + raw)
        if stream:  # leave after the first event (or after an error answer's head)
            received = b""
            while b"data: " not in received and not _refused(received):
                chunk = await connection.receive_some(65536)
                if not chunk:
                    break
                received += chunk


def _refused(received: bytes) -> bool:
    """The answer's head arrived and it is not a 200: no event will follow."""
    return b"\r\n\r\n" in received and not received.startswith(b"HTTP/1.1 200")


async def _run(
    url: str, server: CountingServer, count: int, first: int, rng: random.Random
) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()
    next_index = first
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as http:

        async def worker() -> None:
            nonlocal next_index
            while next_index < first + count:
                i, next_index = next_index, next_index + 1
                fault = _inject(server, rng)
                stream = rng.random() < 0.5
                with trio.fail_after(30):  # none hung
                    outcomes[await _one(http, i, stream, leave=fault == "leave")] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker)
    return outcomes


def _requests_counted(cluster: Any) -> float:
    return sum(
        sample.value
        for metric in cluster.metrics.registry.collect()
        if metric.name == "atomr_requests"
        for sample in metric.samples
        if sample.name == "atomr_requests_total"
    )


async def _settle(cluster: Any, server: CountingServer, sent: int, port: int) -> None:
    """Wait (bounded by the caller) until every request was counted, the upstream has no
    stream open and the gateway holds no client socket: the gateway notices departed
    clients asynchronously."""
    try:
        while _requests_counted(cluster) < sent or server.open_streams or _gateway_sockets(port):
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    except trio.Cancelled:
        print(
            f"not settled: {_requests_counted(cluster):g} of {sent} counted, "
            f"{server.open_streams} upstream streams open, "
            f"{_gateway_sockets(port)} gateway sockets open"
        )
        raise


@pytest.mark.slow
async def test_soak_mixed_requests_under_faults() -> None:
    rng = random.Random(20261204)
    gc.collect()
    fds_at_start = _fds()
    async with open_mock_server(CountingServer()) as server:
        config = load_config(
            {
                "cluster": {"bind": "127.0.0.1:0", "shutdown_grace": "2s"},
                "deployment": [
                    {
                        "name": "chat",
                        "model": "gpt-4o-mini",
                        "runtime_config": {"base_url": f"{server.url}/v1", "api_key": "sk-mock"},
                        "serving": {"max_concurrent": CONCURRENCY, "max_queued": 4 * REQUESTS},
                        "retry": {"max_retries": 3, "initial_backoff": "5ms", "jitter": "none"},
                        "timeouts": {"request_timeout": "10s", "read_timeout": "5s"},
                        "circuit_breaker": {"failure_threshold": 1000},
                    }
                ],
            }
        )
        async with open_cluster(
            config, plugins=[openai_plugin], load_entry_points=False
        ) as cluster:
            async with open_gateway(cluster) as url:
                port = int(url.rsplit(":", 1)[1])
                await _run(url, server, WARMUP, 0, random.Random(1))
                with trio.fail_after(30):
                    await _settle(cluster, server, WARMUP, port)
                gc.collect()
                fds_before, rss_before = _fds(), _rss_mib()
                started = time.perf_counter()
                with trio.fail_after(240):
                    outcomes = await _run(url, server, REQUESTS, WARMUP, rng)
                elapsed = time.perf_counter() - started
                with trio.fail_after(30):
                    await _settle(cluster, server, WARMUP + REQUESTS, port)
                gc.collect()
                fds_after, rss_after = _fds(), _rss_mib()
                counted = _requests_counted(cluster)
                restarts = cluster.metrics.sample(
                    "atomr_replica_restarts_total", {"deployment": "chat"}
                )
                by_status = {
                    f"{s.labels['status']}/{s.labels['error_kind'] or '-'}": s.value
                    for metric in cluster.metrics.registry.collect()
                    if metric.name == "atomr_requests"
                    for s in metric.samples
                    if s.name == "atomr_requests_total"
                }
    gc.collect()
    fds_at_end = _fds()
    print(
        f"\nsoak: {REQUESTS} requests (+{WARMUP} warm-up) in {elapsed:.1f}s, "
        f"concurrency {CONCURRENCY}, fault rate {FAULT_RATE:.0%}\n"
        f"  client outcomes: {dict(sorted(outcomes.items()))}\n"
        f"  atomr_requests_total: {counted:g} {dict(sorted(by_status.items()))}\n"
        f"  upstream: {len(server.requests)} requests, {server.open_streams} streams open\n"
        f"  fds: {fds_before} -> {fds_after} while serving, {fds_at_start} -> {fds_at_end} "
        f"before start / after stop; RSS: {rss_before:.1f} -> {rss_after:.1f} MiB"
    )
    assert sum(outcomes.values()) == REQUESTS
    assert outcomes["ok"] >= REQUESTS * 0.7
    assert counted == WARMUP + REQUESTS
    # no request (nor a client leaving at any moment) may take the replica down
    assert not restarts
    assert not {"error/session_poisoned", "error/internal", "error/draining"} & set(by_status)
    assert server.open_streams == 0
    assert fds_after <= fds_before + FD_SLACK
    assert fds_at_end <= fds_at_start + 2  # every socket of the run was released
    assert rss_after - rss_before < RSS_SLACK_MIB
