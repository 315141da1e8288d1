"""Same dialect in and out: a Messages client on an anthropic deployment.

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
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockAnthropicServer, mock_anthropic

UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
KNOWN = {"model", "messages", "max_tokens", "stream", "system", "tools", "tool_choice"}


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
