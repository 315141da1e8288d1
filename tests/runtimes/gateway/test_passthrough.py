"""Same dialect in and out: Messages on an anthropic deployment, Responses on an openai one.

The body reaches the upstream with only ``model`` rewritten (unknown fields and block
types kept, value for value), and the upstream's answer and events come back as they
were sent, while usage is still read for limits, budgets and metrics.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from atomr_infer_anthropic import PLUGIN as ANTHROPIC
from atomr_infer_core import Deployment, RetryPolicy
from atomr_infer_openai import _plugin as openai_plugin
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_runtimes.gateway._messages import _CONSUMED, _TRANSLATED
from atomr_infer_testkit import (
    MockAnthropicServer,
    mock_anthropic,
    mock_openai,
    mock_runtime_plugin,
)

UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
#: the top-level fields the Messages door reads (an "unknown" field must be none of these)
KNOWN = set(_CONSUMED | _TRANSLATED)


@asynccontextmanager
async def anthropic_gateway() -> AsyncIterator[tuple[str, MockAnthropicServer, Any]]:
    async with mock_anthropic() as server:
        deployment = Deployment(
            name="claude",
            model=UPSTREAM_MODEL,
            runtime_config={"base_url": f"{server.url}/v1", "api_key": "sk-ant"},
            retry=RetryPolicy(max_retries=0),
        )
        async with (
            open_cluster([deployment], plugins=[ANTHROPIC], load_entry_points=False) as cluster,
            open_gateway(cluster, port=0) as url,
        ):
            yield url, server, cluster


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=16)


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A Messages body with unknown top-level fields and unknown block types."""
    unknown_fields = draw(
        st.dictionaries(_names.filter(lambda n: n not in KNOWN), _json, max_size=4)
    )
    unknown_blocks = [
        {"type": f"x_{kind}", **payload}
        for kind, payload in draw(
            st.lists(
                st.tuples(
                    _names, st.dictionaries(_names.filter(lambda n: n != "type"), _json, max_size=3)
                ),
                max_size=3,
            )
        )
    ]
    content = [{"type": "text", "text": draw(st.text(min_size=1, max_size=20))}, *unknown_blocks]
    return {
        "model": "claude",
        "max_tokens": draw(st.integers(1, 64)),
        "messages": [{"role": "user", "content": content}],
        **unknown_fields,
        "stream": draw(st.booleans()),
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(bodies=st.lists(_bodies(), min_size=1, max_size=4))
def test_unknown_fields_and_block_types_reach_the_upstream_unchanged(
    bodies: list[dict[str, Any]],
) -> None:
    async def main() -> None:
        async with anthropic_gateway() as (url, server, _), httpx.AsyncClient() as http:
            for body in bodies:
                reply = await http.post(f"{url}/v1/messages", json=body)
                assert reply.status_code == 200, reply.text
                upstream = server.requests[-1]
                assert upstream.json == {**body, "model": UPSTREAM_MODEL}
                assert list(upstream.json) == list(body)

    trio.run(main)


async def test_the_answer_and_events_come_back_as_the_upstream_sent_them() -> None:
    body = {"model": "claude", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    async with anthropic_gateway() as (url, server, cluster), httpx.AsyncClient() as http:
        unary = await http.post(f"{url}/v1/messages", json=body)
        stream = await http.post(
            f"{url}/v1/messages",
            json={**body, "stream": True},
            headers={"anthropic-beta": "future-feature-2026-12-01"},
        )
        metrics = cluster.metrics.render()
    assert unary.json()["model"] == UPSTREAM_MODEL  # the upstream's own body
    assert unary.json()["id"] == "msg_mock"
    events = [line[7:] for line in stream.text.splitlines() if line.startswith("event: ")]
    # the mock sends an event type no client knows: a passthrough keeps it
    assert "future_event_type" in events
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-1] == "message_stop"
    data = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")]
    assert data[0]["message"]["model"] == UPSTREAM_MODEL
    assert "future-feature-2026-12-01" in server.requests[-1].headers["anthropic-beta"]
    # usage was still read: two requests' tokens are in the metrics
    text = metrics.decode() if isinstance(metrics, bytes) else metrics
    assert 'atomr_tokens_in_total{deployment="claude"} 2.0' in text
    assert 'atomr_tokens_out_total{deployment="claude"} 4.0' in text


async def test_an_overloaded_upstream_is_overloaded_error_529_to_the_client() -> None:
    body = {"model": "claude", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    async with anthropic_gateway() as (url, server, _), httpx.AsyncClient() as http:
        server.inject_status(529)
        unary = await http.post(f"{url}/v1/messages", json=body)
        server.error_event_after(1)
        stream = await http.post(f"{url}/v1/messages", json={**body, "stream": True})
    assert unary.status_code == 529
    assert unary.json()["error"]["type"] == "overloaded_error"
    frames = stream.text.strip().split("\n\n")
    assert frames[-1].startswith("event: error\n")
    assert json.loads(frames[-1].split("data: ", 1)[1])["error"]["type"] == "overloaded_error"
    assert "content_block_delta" in stream.text  # the delta before the error got through


# ---------------------------------------------------------------- Responses on openai


@asynccontextmanager
async def openai_gateway() -> AsyncIterator[tuple[str, Any]]:
    async with mock_openai() as server:
        deployments = [
            Deployment(
                name="gpt",
                model="gpt-4o-mini",
                runtime_config={"base_url": f"{server.url}/v1", "api_key": "sk-oai"},
                retry=RetryPolicy(max_retries=0),
            ),
            Deployment(name="local", model="mock", runtime="mock"),
        ]
        plugins = [openai_plugin, mock_runtime_plugin()]
        async with (
            open_cluster(deployments, plugins=plugins, load_entry_points=False) as cluster,
            open_gateway(cluster, port=0) as url,
        ):
            yield url, server


@st.composite
def _responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A Responses body with unknown fields, item types, content parts and tools."""
    # every field the door reads (an "unknown" one by that name would be type-checked)
    known = {
        "model",
        "input",
        "stream",
        "previous_response_id",
        "tools",
        "text",
        "instructions",
        "max_output_tokens",
        "metadata",
        "parallel_tool_calls",
        "reasoning",
        "store",
        "temperature",
        "tool_choice",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
    unknown_fields = draw(
        st.dictionaries(_names.filter(lambda n: n not in known), _json, max_size=4)
    )
    unknown_items = [
        {"type": f"x_{kind}", **payload}
        for kind, payload in draw(
            st.lists(
                st.tuples(
                    _names, st.dictionaries(_names.filter(lambda n: n != "type"), _json, max_size=3)
                ),
                max_size=3,
            )
        )
    ]
    part = {"type": "input_text", "text": draw(st.text(min_size=1, max_size=20))}
    odd_part = {"type": f"x_{draw(_names)}", "data": draw(_json)}
    message = {"role": "user", "content": [part, odd_part]}
    return {
        "model": "gpt",
        "input": [*unknown_items, message],
        "tools": [{"type": "x_builtin_search", "config": draw(_json)}],
        **unknown_fields,
        "stream": draw(st.booleans()),
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(bodies=st.lists(_responses_bodies(), min_size=1, max_size=4))
def test_responses_bodies_reach_the_upstream_unchanged(bodies: list[dict[str, Any]]) -> None:
    async def main() -> None:
        async with openai_gateway() as (url, server), httpx.AsyncClient() as http:
            for body in bodies:
                reply = await http.post(f"{url}/v1/responses", json=body)
                assert reply.status_code == 200, reply.text
                upstream = server.requests[-1]
                assert upstream.path == "/v1/responses"
                assert upstream.json == {**body, "model": "gpt-4o-mini"}
                assert list(upstream.json) == list(body)

    trio.run(main)


async def test_responses_events_come_back_as_the_upstream_sent_them() -> None:
    body = {"model": "gpt", "input": "hello there", "stream": True}
    async with openai_gateway() as (url, _), httpx.AsyncClient() as http:
        stream = await http.post(f"{url}/v1/responses", json=body)
        plain = await http.post(f"{url}/v1/responses", json={**body, "stream": False})
    events = [line[7:] for line in stream.text.splitlines() if line.startswith("event: ")]
    assert "response.mock_future_event" in events  # unknown to every client: kept
    assert events[0] == "response.created"
    assert events[-1] == "response.completed"
    assert plain.json()["id"] == "resp_mock_1"  # the upstream's own response object
    assert plain.json()["model"] == "gpt-4o-mini"


async def test_a_locally_stored_response_is_continued_by_translation() -> None:
    async with openai_gateway() as (url, server), httpx.AsyncClient() as http:
        local = await http.post(f"{url}/v1/responses", json={"model": "local", "input": "hi"})
        follow = await http.post(
            f"{url}/v1/responses",
            json={"model": "gpt", "input": "again", "previous_response_id": local.json()["id"]},
        )
    assert follow.status_code == 200, follow.text
    upstream = server.requests[-1]
    # the upstream never saw the local response: the conversation went as chat messages
    assert upstream.path == "/v1/chat/completions"
    assert [m["content"] for m in upstream.json["messages"]] == ["hi", "Hello, world!", "again"]
    assert follow.json()["output"][0]["content"][0]["text"] == "Echo: again"
