"""The official openai package against a real gateway on a loopback port."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
import trio

from atomr_infer_core import errors
from atomr_infer_testkit import MockConfig

from .conftest import FakeCluster, open_gateway


def _async_client(url: str, key: str = "dummy") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def test_chat_non_streaming_with_async_client(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        reply = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], temperature=0.5, seed=7
        )
    assert reply.object == "chat.completion"
    assert reply.model == "chat"
    assert reply.choices[0].message.content == "Hello, world!"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        5,
        4,
        9,
    )
    batch = default_cluster.records[0].batch
    assert batch.sampling.temperature == 0.5
    assert batch.sampling.seed == 7


async def test_chat_with_sync_client_in_a_thread(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url:

        def call() -> str:
            with openai.OpenAI(base_url=url + "/v1", api_key="dummy", max_retries=0) as client:
                reply = client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                return f"{reply.choices[0].message.content}|{reply.choices[0].finish_reason}"

        assert await trio.to_thread.run_sync(call) == "Hello,|length"


async def test_chat_streaming_with_usage(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        stream = await client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_completions_and_streaming_completions(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        reply = await client.completions.create(model="chat", prompt="Say hi")
        stream = await client.completions.create(model="chat", prompt="Say hi", stream=True)
        pieces = [c.choices[0].text async for c in stream if c.choices]
    assert reply.object == "text_completion"
    assert reply.choices[0].text == "Hello, world!"
    assert "".join(pieces) == "Hello, world!"


async def test_embeddings_float_and_base64(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        floats = await client.embeddings.create(
            model="chat", input=["a", "b"], encoding_format="float", dimensions=4
        )
        one = await client.embeddings.create(
            model="chat", input="a", encoding_format="float", dimensions=4
        )
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 4
    assert one.data[0].embedding == floats.data[0].embedding


async def test_embeddings_base64_decodes_to_the_same_floats(default_cluster: FakeCluster) -> None:
    import httpx

    async with open_gateway(default_cluster) as url, httpx.AsyncClient(base_url=url) as http:
        plain = (await http.post("/v1/embeddings", json={"model": "chat", "input": "a"})).json()
        b64 = (
            await http.post(
                "/v1/embeddings", json={"model": "chat", "input": "a", "encoding_format": "base64"}
            )
        ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(plain["data"][0]["embedding"], rel=1e-6)


async def test_models_list(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        models = await client.models.list()
        one = await client.models.retrieve("slow")
    assert [m.id for m in models.data] == ["chat", "slow", "stuck", "midfail"]
    assert one.id == "slow"


@pytest.mark.parametrize(
    ("error", "sdk_class"),
    [
        (errors.NotFoundError("no such model", model="x"), openai.NotFoundError),
        (errors.ContextLengthExceededError("too long"), openai.BadRequestError),
        (errors.RateLimitedError("slow down", retry_after_s=2.0), openai.RateLimitError),
        (errors.BudgetExceededError("budget spent"), openai.RateLimitError),
        (errors.ServerError("upstream 500", status=500), openai.InternalServerError),
        (errors.CircuitOpenError("breaker open", retry_after_s=3.0), openai.InternalServerError),
        (errors.RequestTimeoutError("slow upstream"), openai.InternalServerError),
    ],
)
async def test_each_error_class_arrives_as_the_sdk_exception(
    error: errors.InferenceError, sdk_class: type[openai.APIStatusError]
) -> None:
    cluster = FakeCluster({}, errors={"broken": error})
    async with open_gateway(cluster) as url, _async_client(url) as client:
        with pytest.raises(sdk_class) as caught:
            await client.chat.completions.create(
                model="broken", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == error.http_status
    assert caught.value.body["message"] == error.message
    assert caught.value.code == error.code


async def test_unknown_model_is_not_found(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.code == "model_not_found"


async def test_bad_request_names_the_param(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="chat", messages=[{"role": "robot", "content": "hi"}]
            )
    assert caught.value.param == "messages[0].role"


async def test_wrong_key_is_authentication_error() -> None:
    cluster = FakeCluster({"chat": MockConfig()}, api_keys=("sk-right",))
    async with open_gateway(cluster) as url:
        async with _async_client(url, "sk-wrong") as client:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}]
                )
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
        async with _async_client(url, "sk-right") as client:
            reply = await client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}]
            )
    assert reply.choices[0].message.content == "Hello, world!"


async def test_error_after_stream_began_raises_api_error(default_cluster: FakeCluster) -> None:
    async with open_gateway(default_cluster) as url, _async_client(url) as client:
        stream = await client.chat.completions.create(
            model="midfail", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        seen: list[str] = []
        with pytest.raises(openai.APIError, match="fails"):
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "xy"
