"""The embedded default behind the real gateway, called with the official openai client."""

from __future__ import annotations

import openai
import pytest

from atomr_infer_core import ClusterConfig, Config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_torch import DEFAULT_DEPLOYMENTS, _plugin

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def test_openai_client_against_the_embedded_default() -> None:
    config = Config(cluster=ClusterConfig(bind="127.0.0.1:0"), deployments=DEFAULT_DEPLOYMENTS)
    async with open_cluster(config, plugins=[_plugin], load_entry_points=False) as cluster:
        async with open_gateway(cluster) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            async with client:
                reply = await client.chat.completions.create(
                    model="smollm2", messages=QUESTION, temperature=0, max_tokens=32
                )
                stream = await client.chat.completions.create(
                    model="smollm2",
                    messages=QUESTION,
                    temperature=0,
                    max_tokens=32,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [c async for c in stream]
                vectors = await client.embeddings.create(
                    model="minilm", input=["A man plays guitar.", "Someone plays a guitar."]
                )
                models = await client.models.list()
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 2
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    assert {m.id for m in models.data} == {"smollm2", "minilm"}
