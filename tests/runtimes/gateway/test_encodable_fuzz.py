"""Arbitrary JSON into every POST endpoint: a 4xx with the door's error body, or a batch
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
        assert cluster.encoded >= 1
        return
    assert 400 <= status < 500, (status, answer[:300])
    payload = json.loads(answer)
    error = payload["error"]
    if path.startswith("/v1/messages"):  # Anthropic's shape
        assert payload["type"] == "error"
        assert error["type"] in ("invalid_request_error", "not_found_error")
    else:
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]


# -- strategies -----------------------------------------------------------------------
# Bodies are mostly well formed, so that many reach the providers' encoders; poison (and
# plain garbage) shows up in every field often enough to be met in each run.


def _mostly(valid: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, valid, valid, valid, wild)


#: what passes a type check yet cannot be sent: lone surrogates, NaN, infinities, 1e999
POISON = st.sampled_from(["a\ud800b", "\udfff", "\ud83d", math.nan, math.inf, -math.inf, HUGE])
CLEAN_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
TEXT = _mostly(
    CLEAN_TEXT,
    st.text(st.characters(exclude_categories=()), max_size=12)
    | POISON.filter(lambda v: isinstance(v, str) and v != HUGE),
)
NUMBERS = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
)
CLEAN_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | CLEAN_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CLEAN_TEXT, inner, max_size=4),
    max_leaves=16,
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT | POISON,
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


ANY = JSON
#: a free-form field (tool schemas, response_format, unknown fields): sent upstream as is
FREE = _mostly(CLEAN_JSON, ANY)
MESSAGE = st.fixed_dictionaries(
    {
        "role": _mostly(st.sampled_from(["user", "system", "assistant", "developer"]), ANY),
        "content": _mostly(TEXT, ANY),
    },
    optional={"name": _mostly(TEXT, ANY), "tool_calls": ANY, "tool_call_id": TEXT},
)
TOOLS = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.text("abcxyz_", min_size=1, max_size=8)},
                optional={"description": TEXT, "parameters": FREE},
            ),
        }
    ),
    min_size=1,
    max_size=2,
)
COMMON = {
    "stream": _mostly(st.booleans(), ANY),
    "user": _mostly(TEXT, ANY),
    "temperature": _mostly(st.floats(0, 2), NUMBERS | ANY),
    "max_tokens": _mostly(st.integers(1, 100), NUMBERS | ANY),
    "stop": _mostly(st.lists(TEXT, max_size=2), ANY),
    "n": _mostly(st.just(1), st.integers(1, 3) | ANY),
    "seed": NUMBERS,
}


def _body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    shaped = st.fixed_dictionaries(required, optional=optional).flatmap(
        lambda body: st.dictionaries(CLEAN_TEXT, FREE, max_size=2).map(
            lambda extra: {**extra, **body}  # unknown fields: passed upstream as sent
        )
    )
    return _mostly(shaped, ANY)


CHAT = _body(
    {"model": st.just("chat"), "messages": _mostly(st.lists(MESSAGE, min_size=1, max_size=3), ANY)},
    {
        **COMMON,
        "tools": _mostly(TOOLS, ANY),
        "tool_choice": _mostly(st.sampled_from(["auto", "none"]), ANY),
        "response_format": _mostly(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}), FREE
        ),
    },
)
COMPLETION = _body({"model": st.just("chat"), "prompt": _mostly(TEXT, ANY)}, COMMON)
EMBEDDING = _body(
    {"model": st.just("chat"), "input": _mostly(TEXT | st.lists(TEXT, min_size=1), ANY)},
    {"encoding_format": _mostly(st.sampled_from(["float", "base64"]), ANY), "dimensions": NUMBERS},
)

BLOCK = st.fixed_dictionaries(
    {"type": _mostly(st.just("text"), st.sampled_from(["input_text", "image"]) | ANY)},
    optional={"text": _mostly(TEXT, ANY)},
)
DOOR_MESSAGE = st.fixed_dictionaries(
    {
        "role": _mostly(st.sampled_from(["user", "assistant"]), ANY),
        "content": _mostly(TEXT | st.lists(BLOCK, min_size=1, max_size=2), ANY),
    }
)
MESSAGES = _body(
    {
        "model": st.just("chat"),
        "max_tokens": _mostly(st.integers(1, 50), ANY),
        "messages": _mostly(st.lists(DOOR_MESSAGE, min_size=1, max_size=3), ANY),
    },
    {"system": _mostly(TEXT, ANY), "stream": st.booleans(), "metadata": FREE},
)
RESPONSES = _body(
    {
        "model": st.just("chat"),
        "input": _mostly(TEXT | st.lists(DOOR_MESSAGE, min_size=1, max_size=3), ANY),
    },
    {"instructions": _mostly(TEXT, ANY), "stream": st.booleans()},
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


@FUZZ
@given(MESSAGES.map(_dumps))
def test_messages_takes_only_what_every_provider_can_encode(body: bytes) -> None:
    _check("/v1/messages", body)


@FUZZ
@given(RESPONSES.map(_dumps))
def test_responses_takes_only_what_every_provider_can_encode(body: bytes) -> None:
    _check("/v1/responses", body)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["tools", "response_format", "user", "messages", "x_extra"]),
    NESTED,
)
def test_nesting_past_the_limit_anywhere_is_a_400(field: str, nested: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], field: nested}
    depth = int(nested.strip("\x00").split(":")[2])
    cluster = CLUSTER
    cluster.encoded = 0
    status, answer = trio.run(_call, APP, "/v1/chat/completions", _dumps(body))
    if depth > MAX_JSON_DEPTH:
        assert status == 400, (status, answer[:200])
        assert "nests arrays and objects deeper" in json.loads(answer)["error"]["message"]
    else:  # within the limit: served (encoded for every provider), or a type error
        assert status in (200, 400), (status, answer[:200])
        assert status == 400 or cluster.encoded == 1
