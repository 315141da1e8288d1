"""Arbitrary bodies on the front doors get a typed 4xx in the door's dialect, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from atomr_infer_testkit import MockConfig

from .conftest import FakeCluster, open_gateway

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(-3, 3), st.text(max_size=6)
)
_json = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
_type = st.sampled_from(
    [
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "input_text",
        "input_image",
        "function_call",
        "function_call_output",
        "reasoning",
        "message",
        "bogus",
    ]
)
_block = st.fixed_dictionaries(
    {"type": _type},
    optional={
        "text": _json,
        "source": _json,
        "id": _json,
        "name": _json,
        "input": _json,
        "content": _json,
        "call_id": _json,
        "arguments": _json,
        "output": _json,
        "role": _json,
        "tool_use_id": _json,
    },
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", 3]),
        "content": st.one_of(st.text(max_size=5), st.lists(_block, max_size=3), _json),
        "type": _type,
    },
)
_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["chat", "nope", 7]),
        "max_tokens": _json,
        "max_output_tokens": _json,
        "messages": st.one_of(st.lists(_message, max_size=3), _json),
        "input": st.one_of(st.text(max_size=5), st.lists(_message, max_size=3), _json),
        "system": _json,
        "instructions": _json,
        "tools": _json,
        "tool_choice": _json,
        "thinking": _json,
        "reasoning": _json,
        "text": _json,
        "stream": _json,
        "temperature": _json,
        "previous_response_id": _json,
        "output_config": _json,
    },
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    bodies=st.lists(
        st.tuples(st.sampled_from(["messages", "responses", "count"]), _body),
        min_size=5,
        max_size=5,
    )
)
def test_no_body_makes_a_front_door_answer_500(bodies: list[tuple[str, dict[str, Any]]]) -> None:
    paths = {
        "messages": "/v1/messages",
        "responses": "/v1/responses",
        "count": "/v1/messages/count_tokens",
    }

    async def main() -> None:
        cluster = FakeCluster({"chat": MockConfig(chunks=("ok",))})
        async with open_gateway(cluster) as url, httpx.AsyncClient(base_url=url) as http:
            for door, body in bodies:
                reply = await http.post(paths[door], json=body)
                assert reply.status_code in (200, 400, 404), (door, body, reply.text)
                if reply.status_code != 200:
                    payload = reply.json()
                    if door == "responses":
                        assert payload["error"]["type"] == "invalid_request_error"
                    else:
                        assert payload["type"] == "error"
                        kind = payload["error"]["type"]
                        assert kind in ("invalid_request_error", "not_found_error")

    trio.run(main)
