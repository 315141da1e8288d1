"""CORS for configured origins, and credential rotation over the admin endpoint and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from atomr_infer._cli import main
from atomr_infer_core import SessionRebuildCause
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockRunner, mock_runtime_plugin

HI = [{"role": "user", "content": "hi"}]
KEY = {"authorization": "Bearer gw-key"}
APP = "https://app.example"


def _config(**cluster: Any) -> Any:
    return load_config(
        {
            "cluster": {"bind": "127.0.0.1:0", "api_keys": ["gw-key"], **cluster},
            "deployment": [
                {"name": "chat", "model": "mock", "runtime": "mock", "replicas": 2},
                {"name": "other", "model": "mock", "runtime": "mock"},
            ],
        }
    )


@asynccontextmanager
async def _gateway(**cluster: Any) -> AsyncIterator[tuple[str, list[MockRunner]]]:
    runners: list[MockRunner] = []
    plugin = mock_runtime_plugin(on_create=runners.append)
    async with (
        open_cluster(_config(**cluster), plugins=[plugin], load_entry_points=False) as c,
        open_gateway(c) as url,
    ):
        yield url, runners


def _preflight(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }


def _rebuilds(runners: list[MockRunner]) -> dict[tuple[str, int], list[SessionRebuildCause]]:
    return {(r.deployment.name, r.replica_index): r.counters.rebuilds for r in runners}


async def test_cors_is_off_by_default() -> None:
    async with _gateway() as (url, _), httpx.AsyncClient(base_url=url) as http:
        preflight = await http.options("/v1/chat/completions", headers=_preflight(APP))
        body = {"model": "chat", "messages": HI}
        post = await http.post("/v1/chat/completions", json=body, headers={**KEY, "origin": APP})
    assert preflight.status_code != 204
    assert "access-control-allow-origin" not in preflight.headers
    assert post.status_code == 200
    assert "access-control-allow-origin" not in post.headers


async def test_cors_answers_preflights_and_marks_responses_for_listed_origins() -> None:
    async with (
        _gateway(cors_origins=[APP]) as (url, _),
        httpx.AsyncClient(base_url=url) as http,
    ):
        preflight = await http.options("/v1/chat/completions", headers=_preflight(APP))
        stranger = await http.options(
            "/v1/chat/completions", headers=_preflight("https://evil.example")
        )
        body = {"model": "chat", "messages": HI}
        post = await http.post("/v1/chat/completions", json=body, headers={**KEY, "origin": APP})
        unauthorized = await http.post("/v1/chat/completions", json=body, headers={"origin": APP})
        models = await http.get("/v1/models", headers={**KEY, "origin": APP})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert stranger.status_code == 403
    assert stranger.json()["error"]["code"] == "cors_origin_not_allowed"
    assert "access-control-allow-origin" not in stranger.headers
    for response in (post, unauthorized, models):
        assert response.headers["access-control-allow-origin"] == APP
    assert "x-ratelimit-remaining-requests" in post.headers["access-control-expose-headers"]
    assert "x-atomr-deployment" in post.headers["access-control-expose-headers"]
    assert (post.status_code, unauthorized.status_code, models.status_code) == (200, 401, 200)


async def test_rotate_credentials_rebuilds_every_serving_replica_behind_the_keys() -> None:
    async with _gateway() as (url, runners), httpx.AsyncClient(base_url=url) as http:
        refused = await http.post("/admin/rotate-credentials")
        everything = await http.post("/admin/rotate-credentials", headers=KEY)
        one = await http.post(
            "/admin/rotate-credentials", headers=KEY, json={"deployment": "other"}
        )
        unknown = await http.post("/admin/rotate-credentials?deployment=nope", headers=KEY)
        bad = await http.post("/admin/rotate-credentials", headers=KEY, json={"deployment": 3})
        after = await http.post(
            "/v1/chat/completions", headers=KEY, json={"model": "chat", "messages": HI}
        )
    assert refused.status_code == 401
    assert everything.status_code == 200
    assert everything.json()["deployments"] == [
        {"deployment": "chat", "rebuilt": 2, "failed": 0, "error": None},
        {"deployment": "other", "rebuilt": 1, "failed": 0, "error": None},
    ]
    assert one.json()["deployments"] == [
        {"deployment": "other", "rebuilt": 1, "failed": 0, "error": None}
    ]
    assert unknown.status_code == 404
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "deployment"
    manual = SessionRebuildCause.MANUAL
    assert _rebuilds(runners) == {
        ("chat", 0): [manual],
        ("chat", 1): [manual],
        ("other", 0): [manual, manual],
    }
    assert after.status_code == 200


async def test_rotate_credentials_command_takes_the_sdk_base_url(capsys: Any) -> None:
    async with _gateway() as (url, runners):
        argv = ["rotate-credentials", "--url", url + "/v1", "--api-key", "gw-key"]
        code = await trio.to_thread.run_sync(main, [*argv, "--deployment", "chat"])
        out = capsys.readouterr().out
        wrong = await trio.to_thread.run_sync(
            main, ["rotate-credentials", "--url", url, "--api-key", "wrong"]
        )
        err = capsys.readouterr().err
    assert code == 0
    assert out == "chat: 2 session(s) rebuilt\n"
    assert wrong == 1 and "401" in err
    assert [len(r.counters.rebuilds) for r in runners] == [1, 1, 0]
