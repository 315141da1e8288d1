"""Tenants (``[[key]]``) at the gateway: fair queueing, own limits and budget, models, spend.

Real gateways over the real Cluster with the testkit's mock runtime (priced: $1 / Mtok
in, $2 / Mtok out), the official openai and anthropic clients, MockClock where time
matters.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from atomr_infer._cli import main
from atomr_infer._cost_report import cost_report
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockRunner, mock_runtime_plugin

HI = [{"role": "user", "content": "hi"}]
CLUSTER_KEY = "sk-cluster-0c1d2e3f"
KEYS = {
    "light": "sk-light-5a6b7c8d9e",
    "heavy": "sk-heavy-1f2e3d4c5b",
    "capped": "sk-capped-9a8b7c6d5e",
    "broke": "sk-broke-4d3c2b1a0f",
}


def _config(ledger: str | None = None) -> dict[str, Any]:
    mock = {"chunks": ["Hel", "lo"], "chunk_delay": "10ms", "input_tokens": 5}
    config: dict[str, Any] = {
        "cluster": {"bind": "127.0.0.1:0", "api_keys": [CLUSTER_KEY]},
        "deployment": [
            {
                "name": "chat",
                "model": "mock",
                "runtime": "mock",
                "runtime_config": mock,
                "serving": {"max_concurrent": 1, "on_capacity_exhausted": "queue"},
                "timeouts": {"request_timeout": "1h"},
            },
            {"name": "other", "model": "mock", "runtime": "mock", "runtime_config": mock},
        ],
        "key": [
            {"name": "light", "key": KEYS["light"], "weight": 1},
            {"name": "heavy", "key": KEYS["heavy"], "weight": 3},
            {
                "name": "capped",
                "key": KEYS["capped"],
                "models": ["chat"],
                "rate_limits": {"requests_per_minute": 2},
            },
            {
                "name": "broke",
                "key": KEYS["broke"],
                "models": ["other"],
                # a request without max_tokens may cost up to 1 in + 4096 out ≈ $0.0082
                "budget": {"max_spend_per_hour_usd": 0.0001},
            },
        ],
    }
    if ledger is not None:
        config["state"] = {"spend_ledger": ledger}
    return config


@asynccontextmanager
async def _gateway(
    config: dict[str, Any] | Path | None = None,
) -> AsyncIterator[tuple[str, Any, dict[str, MockRunner]]]:
    runners: dict[str, MockRunner] = {}
    plugin = mock_runtime_plugin(on_create=lambda r: runners.__setitem__(r.deployment.name, r))
    async with open_cluster(
        load_config(config or _config()), plugins=[plugin], load_entry_points=False
    ) as cluster:
        async with open_gateway(cluster) as url:
            yield url, cluster, runners


def _openai(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_two_saturating_tenants_are_admitted_in_proportion_to_their_weights(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Weights 1:3, eight clients each, one slot: the admitted ratio is 1:3 within 10 %."""
    served: list[str] = []
    wanted = 200
    async with _gateway() as (url, _, _), httpx.AsyncClient(base_url=url, timeout=None) as http:

        async def client(tenant: str, done: trio.CancelScope) -> None:
            while True:
                response = await http.post(
                    "/v1/chat/completions",
                    json={"model": "chat", "messages": HI},
                    headers=_auth(KEYS[tenant]),
                )
                assert response.status_code == 200, response.text
                served.append(tenant)
                if len(served) >= wanted:
                    done.cancel()

        async with trio.open_nursery() as nursery:
            for tenant in ("light", "heavy"):
                for _ in range(8):
                    nursery.start_soon(client, tenant, nursery.cancel_scope)
    # the first few were admitted before both lines were full: count the saturated run
    counts = Counter(served[16:wanted])
    ratio = counts["light"] / counts["heavy"]
    assert abs(ratio - 1 / 3) <= 0.1 * (1 / 3), counts


async def test_a_tenant_over_its_rpm_gets_429_with_retry_after_while_another_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        _gateway() as (url, _, runners),
        _openai(url, KEYS["capped"]) as capped,
        _openai(url, KEYS["heavy"]) as heavy,
    ):
        for _ in range(2):
            await capped.chat.completions.create(model="chat", messages=HI)
        with pytest.raises(openai.RateLimitError) as caught:
            await capped.chat.completions.create(model="chat", messages=HI)
        other = await heavy.chat.completions.create(model="chat", messages=HI)
        executions = runners["chat"].counters.executions
    response = caught.value.response
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert "key capped" in caught.value.message
    assert other.choices[0].message.content == "Hello"
    assert executions == 3  # the refused request never reached the runner


async def test_a_model_the_key_may_not_use_is_403_for_openai_and_anthropic_clients() -> None:
    async with (
        _gateway() as (url, _, runners),
        _openai(url, KEYS["capped"]) as client,
        anthropic.AsyncAnthropic(base_url=url, api_key=KEYS["capped"], max_retries=0) as claude,
        httpx.AsyncClient(base_url=url) as http,
    ):
        with pytest.raises(openai.PermissionDeniedError) as oai:
            await client.chat.completions.create(model="other", messages=HI)
        with pytest.raises(anthropic.PermissionDeniedError) as ant:
            await claude.messages.create(model="other", max_tokens=8, messages=HI)
        responses = await http.post(
            "/v1/responses", json={"model": "other", "input": "hi"}, headers=_auth(KEYS["capped"])
        )
        embeddings = await http.post(
            "/v1/embeddings", json={"model": "other", "input": "hi"}, headers=_auth(KEYS["capped"])
        )
        listed = await client.models.list()
        allowed = await claude.messages.create(model="chat", max_tokens=8, messages=HI)
        executions = runners["other"].counters.executions
    assert oai.value.status_code == 403
    assert oai.value.code == "model_not_allowed"
    assert "may use: chat" in oai.value.message
    assert ant.value.status_code == 403
    assert ant.value.body["error"]["type"] == "permission_error"
    assert responses.status_code == 403
    assert embeddings.status_code == 403
    assert [m.id for m in listed.data] == ["chat"]
    assert allowed.content[0].text == "Hello"
    assert executions == 0  # refused before anything ran


async def test_cluster_api_keys_keep_working_and_see_every_model() -> None:
    async with (
        _gateway() as (url, _, _),
        _openai(url, CLUSTER_KEY) as client,
        _openai(url, "sk-wrong") as wrong,
    ):
        a = await client.chat.completions.create(model="chat", messages=HI)
        b = await client.chat.completions.create(model="other", messages=HI)
        listed = await client.models.list()
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="chat", messages=HI)
    assert a.choices[0].message.content == b.choices[0].message.content == "Hello"
    assert [m.id for m in listed.data] == ["chat", "other"]


async def test_a_tenant_over_its_budget_gets_429_insufficient_quota() -> None:
    async with _gateway() as (url, cluster, _), _openai(url, KEYS["broke"]) as client:
        # its worst case ($0.0082, no max_tokens) cannot fit $0.0001 an hour
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="other", messages=HI)
        # up to 1 in + 4 out = $0.000009 fits: 11 of them do, then the hour is full
        answers = []
        for _ in range(12):
            try:
                await client.chat.completions.create(model="other", messages=HI, max_tokens=4)
                answers.append("ok")
            except openai.RateLimitError:
                answers.append("429")
        [status] = [t for t in cluster.tenants.status() if t.name == "broke"]
    assert caught.value.code == "insufficient_quota"
    assert "key 'broke' is over its budget" in caught.value.message
    # each settles to its real cost: 5 in + 2 out = $0.000009
    assert answers == ["ok"] * 11 + ["429"]
    assert status.spend_hour_usd == pytest.approx(11 * 9e-6)
    assert status.rejected == 2


def _with_key(**key: Any) -> dict[str, Any]:
    config = _config()
    config["key"].append({"name": "extra", "key": "sk-extra-6e5d4c3b2a", **key})
    return config


async def test_a_budget_refusal_takes_no_rpm_slot() -> None:
    # RPM 2 and a budget a request without max_tokens cannot fit
    config = _with_key(
        rate_limits={"requests_per_minute": 2}, budget={"max_spend_per_hour_usd": 0.0001}
    )
    async with _gateway(config) as (url, _, _), _openai(url, "sk-extra-6e5d4c3b2a") as client:
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(model="other", messages=HI)
            assert refused.value.code == "insufficient_quota"
        # the three refusals used none of the two requests a minute
        for _ in range(2):
            await client.chat.completions.create(model="other", messages=HI, max_tokens=4)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="other", messages=HI, max_tokens=4)
        assert limited.value.code != "insufficient_quota"


async def test_warn_admits_over_budget_and_logs_once_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _with_key(budget={"max_spend_per_hour_usd": 0.0001, "on_exceeded": "warn"})
    caplog.set_level(logging.WARNING)
    async with _gateway(config) as (url, cluster, _), _openai(url, "sk-extra-6e5d4c3b2a") as c:
        for _ in range(3):  # each may cost $0.0082: over the hour's $0.0001, admitted
            reply = await c.chat.completions.create(model="other", messages=HI)
            assert reply.choices[0].message.content == "Hello"
        [status] = [t for t in cluster.tenants.status() if t.name == "extra"]
    warnings = [r.getMessage() for r in caplog.records if "over its $" in r.getMessage()]
    assert warnings == ["key extra is over its $0.000100 budget per hour (on_exceeded = warn)"]
    assert (status.requests, status.rejected, status.throttled) == (3, 0, False)
    assert "sk-extra" not in caplog.text


async def test_throttle_halves_the_weight_while_over_budget() -> None:
    config = _with_key(
        weight=4, budget={"max_spend_per_hour_usd": 0.0001, "on_exceeded": "throttle"}
    )
    async with _gateway(config) as (url, cluster, _), _openai(url, "sk-extra-6e5d4c3b2a") as c:
        await c.chat.completions.create(model="other", messages=HI, max_tokens=4)
        assert cluster.tenants.weight("extra") == 4  # $0.000009 fits
        await c.chat.completions.create(model="other", messages=HI)  # worst case over
        [status] = [t for t in cluster.tenants.status() if t.name == "extra"]
        assert status.throttled and status.rejected == 0
        assert cluster.tenants.weight("extra") == 2


async def test_a_tenants_spend_shows_in_status_metrics_and_cost_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(_toml(_config(ledger="spend.sqlite")), encoding="utf-8")
    # mock usage: 5 in + 2 out at $1 / $2 per Mtok
    cost = (5 * 1 + 2 * 2) / 1e6
    async with (
        _gateway(path) as (url, _, _),
        httpx.AsyncClient(base_url=url) as http,
    ):
        for _ in range(3):
            ok = await http.post(
                "/v1/chat/completions",
                json={"model": "chat", "messages": HI},
                headers=_auth(KEYS["heavy"]),
            )
            assert ok.status_code == 200
        mine = (await http.get("/v1/status", headers=_auth(KEYS["heavy"]))).json()
        everyone = (await http.get("/v1/status", headers=_auth(CLUSTER_KEY))).json()
        metrics = (await http.get("/metrics")).text
    [heavy] = mine["tenants"]
    assert heavy["name"] == "heavy"
    assert (heavy["requests"], heavy["in_flight"], heavy["rejected"]) == (3, 0, 0)
    assert (heavy["tokens_in"], heavy["tokens_out"]) == (15, 6)
    assert heavy["spend_hour_usd"] == pytest.approx(3 * cost)
    assert [t["name"] for t in everyone["tenants"]] == ["light", "heavy", "capped", "broke"]
    assert 'atomr_tenant_requests_total{status="ok",tenant="heavy"} 3.0' in metrics
    assert f'atomr_tenant_cost_usd_total{{tenant="heavy"}} {3 * cost!r}' in metrics
    assert cost_report(str(path), "day") == 0
    report = capsys.readouterr().out
    deployments, tenants = report.split("\n\n")
    assert deployments.startswith("deployment")
    [row] = [line for line in tenants.splitlines() if line.startswith("heavy")]
    assert float(row.split()[-1]) == pytest.approx(3 * cost)


async def test_no_key_string_appears_in_logs_status_metrics_or_error_bodies(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with _gateway() as (url, cluster, _), httpx.AsyncClient(base_url=url) as http:

        async def post(key: str, model: str, path: str = "/v1/chat/completions") -> None:
            body = (
                {"model": model, "messages": HI, "max_tokens": 8}
                if "chat" in path
                else {"model": model, "max_tokens": 8, "messages": HI}
            )
            response = await http.post(path, json=body, headers=_auth(key))
            seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")

        for key in KEYS.values():
            for model in ("chat", "other", "missing"):
                await post(key, model)
                await post(key, model, "/v1/messages")
        for _ in range(3):  # capped: over its rpm
            await post(KEYS["capped"], "chat")
        await post(KEYS["capped"][:-1], "chat")  # a near miss: 401
        for key in (*KEYS.values(), CLUSTER_KEY):
            seen.append((await http.get("/v1/status", headers=_auth(key))).text)
            seen.append((await http.get("/v1/models", headers=_auth(key))).text)
        seen.append((await http.get("/metrics")).text)
        seen.append(repr(cluster.config))
        seen.append(json.dumps(_plain(cluster.tenants.status())))
    statuses = {line.split()[0] for line in seen if line[:3].isdigit()}
    assert {"200", "401", "403", "404", "429"} <= statuses
    text = "\n".join([*seen, caplog.text, *(str(r.__dict__) for r in caplog.records)])
    for key in (*KEYS.values(), CLUSTER_KEY):
        assert key not in text
    # the request log line names the tenant (its name, never the key), refusals included
    access = [r for r in caplog.records if r.name == "atomr_infer.gateway" and hasattr(r, "status")]
    assert {(r.tenant, r.status) for r in access} >= {("capped", 429), ("capped", 403)}
    assert {r.tenant for r in access} == {*KEYS, None}


def _plain(value: Any) -> Any:
    from atomr_infer_runtimes.gateway._app import to_plain

    return to_plain(value)


def _toml(data: dict[str, Any]) -> str:
    """Enough TOML for these configs (tables, arrays of tables, strings, numbers, lists)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return json.dumps(v)

    def table(prefix: str, values: dict[str, Any], array: bool = False) -> None:
        lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        subs = []
        for k, v in values.items():
            if isinstance(v, dict):
                subs.append((k, v))
            else:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in subs:
            table(f"{prefix}.{k}", v)

    for name, value in data.items():
        if isinstance(value, list):
            for item in value:
                table(name, item, array=True)
        else:
            table(name, value)
    return "\n".join(lines) + "\n"


async def test_the_status_command_prints_keys_and_pipelines(
    capfd: pytest.CaptureFixture[str],
) -> None:
    config = _config()
    config["pipeline"] = [{"name": "smart", "kind": "cascade", "steps": ["other", "chat"]}]
    async with _gateway(config) as (url, _, _), _openai(url, KEYS["heavy"]) as client:
        await client.chat.completions.create(model="chat", messages=HI)
        code = await trio.to_thread.run_sync(
            main, ["status", "--url", url, "--api-key", CLUSTER_KEY]
        )
    out = capfd.readouterr().out
    assert code == 0
    [smart] = [line for line in out.splitlines() if line.startswith("smart")]
    assert smart.split() == ["smart", "cascade", "other", ">", "chat"]
    [heavy] = [line for line in out.splitlines() if line.startswith("heavy")]
    assert heavy.split()[:6] == ["heavy", "3", "1", "0", "0", "5/2"]
    assert "light" in out and "sk-" not in out


async def test_a_cascade_is_one_request_of_its_key_whatever_its_steps() -> None:
    config = _with_key(models=["smart"], rate_limits={"requests_per_minute": 2})
    config["pipeline"] = [
        {
            "name": "smart",
            "kind": "cascade",
            "steps": ["other", "chat"],
            "escalate_when": ["length"],
        }
    ]
    async with _gateway(config) as (url, cluster, _), _openai(url, "sk-extra-6e5d4c3b2a") as c:
        for _ in range(2):  # "Hel" cut at max_tokens: the first step escalates every time
            reply = await c.chat.completions.create(model="smart", messages=HI, max_tokens=1)
            assert reply.choices[0].message.content == "Hel"
        with pytest.raises(openai.RateLimitError):
            await c.chat.completions.create(model="smart", messages=HI, max_tokens=1)
        [status] = [t for t in cluster.tenants.status() if t.name == "extra"]
    assert (status.requests, status.rejected, status.in_flight) == (2, 1, 0)
    # what both steps of both requests used: 5 in + 1 out each
    assert (status.tokens_in, status.tokens_out) == (4 * 5, 4 * 1)
