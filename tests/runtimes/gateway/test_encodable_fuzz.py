"""Arbitrary JSON into every POST endpoint: a 4xx with OpenAI's error body, or a batch
that every provider's wire encoder can encode. Never a 500, never a runner that fails
while encoding (which would take its replica down with every request on it).

The gateway's ASGI app is called in-process (no sockets: hundreds of examples run in a
few seconds); the stand-in cluster hands each batch to the OpenAI (and LiteLLM, the same
wire), Anthropic and Gemini request builders and encodes the bodies with the remote
engine's own ``json.dumps`` settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from atomr_infer_anthropic._config import AnthropicConfig
from atomr_infer_anthropic._runner import AnthropicProvider
from atomr_infer_core import ClusterConfig, Config, ExecuteBatch, RequestKind, Secret, TokenChunk
from atomr_infer_core.errors import BadRequestError
from atomr_infer_gemini._config import GeminiConfig
from atomr_infer_gemini._runner import GeminiProvider
from atomr_infer_openai._config import OpenAIConfig
from atomr_infer_openai._wire import OpenAIProvider
from atomr_infer_runtimes.gateway import create_app
from atomr_infer_runtimes.gateway._json import MAX_JSON_DEPTH

KEY = Secret("sk-test")
PROVIDERS = (
    OpenAIProvider(OpenAIConfig(api_key=KEY), "gpt-4o-mini"),
    AnthropicProvider(AnthropicConfig(api_key=KEY), "claude-3-5-haiku-latest"),
    GeminiProvider(GeminiConfig(api_key=KEY), "gemini-2.0-flash"),
)
#: what ``json.dumps`` writes for these stand-ins is replaced by raw JSON text Python
#: itself never writes: a number that overflows a double
HUGE = "\x00huge\x00"


class EncodingCluster:
    """Serves every model by encoding the batch for every provider, then answering."""

    def __init__(self) -> None:
        self.config = Config(cluster=ClusterConfig(bind="127.0.0.1:0"))
        self.encoded = 0

    @asynccontextmanager
    async def execute(self, batch: ExecuteBatch) -> AsyncIterator[Any]:
        for provider in PROVIDERS:
            if batch.kind is RequestKind.EMBEDDING and provider.name != "openai":
                continue
            try:
                wire = provider.build_request(batch, KEY)
            except BadRequestError:
                raise  # the provider cannot express it: a typed 400, fine
            # the remote engine's encoding, raw: for an admitted batch it must not raise
            # (the engine would turn a failure into a 400 too, but the front door must
            # not rely on that: this is the property under test)
            json.dumps(
                wire.json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
        self.encoded += 1
        yield _chunks(batch)


async def _chunks(batch: ExecuteBatch) -> AsyncIterator[TokenChunk]:
    if batch.kind is RequestKind.EMBEDDING:
        yield TokenChunk(
            request_id=batch.request_id, embeddings=tuple((0.0, 1.0) for _ in batch.inputs or ())
        )
        return
    yield TokenChunk(request_id=batch.request_id, text_delta="ok", finish_reason="stop")


async def _call(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, allow_nan=True)  # NaN/Infinity literals, \udXXX escapes
    text = text.replace(json.dumps(HUGE), "1e999")
    for kind in "[{":
        for depth in DEPTHS:
            text = text.replace(json.dumps(f"\x00deep:{kind}:{depth}\x00"), _deep(kind, depth))
    return text.encode()


CLUSTER = EncodingCluster()
APP = create_app(CLUSTER)  # one app for every example: building a Quart app is slow


def _check(path: str, body: bytes) -> None:
    cluster = CLUSTER
    cluster.encoded = 0
    status, answer = trio.run(_call, APP, path, body)
    if status == 200:
        assert cluster.encoded == 1
        return
    assert 400 <= status < 500, (status, answer[:300])
    error = json.loads(answer)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]


# -- strategies -----------------------------------------------------------------------
#: what passes a type check yet cannot be sent: lone surrogates, NaN, infinities, 1e999
POISON = st.sampled_from(["a\ud800b", "\udfff", "\ud83d", math.nan, math.inf, -math.inf, HUGE])
TEXT = st.text(st.characters(exclude_categories=()), max_size=12) | POISON.filter(
    lambda v: isinstance(v, str)
)
NUMBERS = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
)
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT | POISON
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=24,
)


DEPTHS = (MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 1, 900, 5000)
#: stand-ins for nesting written as raw text (Python's own encoder would overflow the
#: interpreter's stack on the deepest): arrays or objects, ``depth`` levels
NESTED = st.sampled_from([f"\x00deep:{kind}:{depth}\x00" for kind in "[{" for depth in DEPTHS])


def _deep(kind: str, depth: int) -> str:
    if kind == "[":
        return "[" * depth + "0" + "]" * depth
    return '{"k":' * depth + "0" + "}" * depth


ANY = JSON | NESTED
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]) | ANY,
        "content": TEXT | ANY,
    },
    optional={"name": TEXT | ANY, "tool_calls": ANY, "tool_call_id": TEXT | ANY},
)
COMMON = {
    "stream": st.booleans() | ANY,
    "user": TEXT | ANY,
    "temperature": NUMBERS | ANY,
    "max_tokens": NUMBERS | ANY,
    "stop": TEXT | ANY,
    "n": st.integers(1, 3) | ANY,
    "seed": NUMBERS,
    TEXT: ANY,  # an unknown field: passed upstream as sent
}


def _body(required: dict[str, Any], optional: dict[Any, Any]) -> st.SearchStrategy[Any]:
    fixed = {k: v for k, v in optional.items() if isinstance(k, str)}
    shaped = st.fixed_dictionaries(required, optional=fixed).flatmap(
        lambda body: st.dictionaries(TEXT, ANY, max_size=2).map(lambda extra: {**extra, **body})
    )
    return shaped | ANY


CHAT = _body(
    {"model": st.just("chat"), "messages": st.lists(MESSAGE, min_size=1, max_size=3) | ANY},
    {**COMMON, "tools": ANY, "tool_choice": TEXT | ANY, "response_format": ANY},
)
COMPLETION = _body({"model": st.just("chat"), "prompt": TEXT | ANY}, COMMON)
EMBEDDING = _body(
    {"model": st.just("chat"), "input": TEXT | st.lists(TEXT, min_size=1) | ANY},
    {"encoding_format": st.sampled_from(["float", "base64"]) | ANY, "dimensions": NUMBERS},
)

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(CHAT.map(_dumps))
def test_chat_completions_takes_only_what_every_provider_can_encode(body: bytes) -> None:
    _check("/v1/chat/completions", body)


@FUZZ
@given(COMPLETION.map(_dumps))
def test_completions_takes_only_what_every_provider_can_encode(body: bytes) -> None:
    _check("/v1/completions", body)


@FUZZ
@given(EMBEDDING.map(_dumps))
def test_embeddings_takes_only_what_every_provider_can_encode(body: bytes) -> None:
    _check("/v1/embeddings", body)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_arbitrary_bytes_are_a_400_never_a_500(body: bytes) -> None:
    _check("/v1/chat/completions", body)
