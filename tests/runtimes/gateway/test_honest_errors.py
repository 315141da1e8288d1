"""What used to end in a 500, a redirect page or a wrong status now gets the right 4xx."""

from __future__ import annotations

import logging

import httpx
import pytest

from .conftest import FakeCluster, open_gateway

HI = [{"role": "user", "content": "hi"}]


def _chat(**extra: str) -> bytes:
    fields = "".join(f', "{k}": {v}' for k, v in extra.items())
    return (
        '{"model": "chat", "messages": [{"role": "user", "content": "hi"}]' + fields + "}"
    ).encode()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            "messages[0].content",
        ),
        (_chat(tools='[{"type": "function", "function": {"name": "f", "x": NaN}}]'), None),
        (_chat(response_format='{"type": "json_schema", "limit": Infinity}'), None),
        (_chat(response_format='{"type": "json_object", "scale": 1e999}'), None),
        (_chat(user='"\\udfff"'), "user"),
        (_chat(**{"\\ud800": "1"}), "\ud800"),
    ],
)
async def test_unencodable_content_is_a_400_for_that_request(
    default_cluster: FakeCluster, body: bytes, param: str | None
) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        after = await http.post("/v1/chat/completions", json={"model": "chat", "messages": HI})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert response.headers["x-should-retry"] == "false"
    assert default_cluster.records[-1].batch.messages[0].content == "hi"  # only `after` ran
    assert len(default_cluster.records) == 1
    assert after.status_code == 200


async def test_deeply_nested_json_is_a_400_logged_as_400(
    default_cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    caplog.set_level(logging.INFO, logger="atomr_infer.gateway")
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        nested = await http.post(
            "/v1/chat/completions",
            content=_chat(tools="[" + "[" * 70 + "]" * 70 + "]"),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert "nests" in response.json()["error"]["message"]
    assert nested.status_code == 400
    assert nested.json()["error"]["param"].startswith("tools[0]")
    lines = [
        r.getMessage() for r in caplog.records if "POST /v1/chat/completions" in r.getMessage()
    ]
    assert [line.split()[2] for line in lines] == ["400", "400"]


async def test_doubled_slashes_are_a_json_404_not_a_redirect(
    default_cluster: FakeCluster,
) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("//v1//models")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_on_post_endpoints_are_405(
    default_cluster: FakeCluster, path: str, method: str
) -> None:
    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == {
        "message": f"method {method} is not allowed on {path}; use POST",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
