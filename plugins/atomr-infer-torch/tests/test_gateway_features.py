"""logprobs, n and the decoder's refusals through the gateway, on a tiny torch model,
with the official openai client."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from atomr_infer_core import ClusterConfig, Config, Deployment
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_torch import _plugin

HI = [{"role": "user", "content": "the cat sat"}]


def _config(path: Path) -> Config:
    deployment = Deployment(
        name="tiny",
        model="tiny",
        runtime="torch",
        runtime_config={"weights": str(path), "device": "cpu"},
    )
    return Config(cluster=ClusterConfig(bind="127.0.0.1:0"), deployments=(deployment,))


async def test_logprobs_n_and_refusals_through_the_openai_client(tiny_gpt2: Path) -> None:
    async with open_cluster(
        _config(tiny_gpt2), plugins=[_plugin], load_entry_points=False
    ) as cluster:
        async with open_gateway(cluster) as url:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            async with client:
                chat = await client.chat.completions.create(
                    model="tiny", messages=HI, max_tokens=5, logprobs=True, top_logprobs=2
                )
                stream = await client.chat.completions.create(
                    model="tiny",
                    messages=HI,
                    max_tokens=5,
                    logprobs=True,
                    top_logprobs=2,
                    stream=True,
                )
                streamed = [c async for c in stream]
                legacy = await client.completions.create(
                    model="tiny", prompt="the cat", max_tokens=4, logprobs=3
                )
                several = await client.chat.completions.create(
                    model="tiny", messages=HI, max_tokens=4, n=3, temperature=1.0, seed=1
                )
                with pytest.raises(openai.BadRequestError) as refused:
                    await client.chat.completions.create(
                        model="tiny",
                        messages=HI,
                        tools=[{"type": "function", "function": {"name": "f"}}],
                    )
                with pytest.raises(openai.BadRequestError) as uncompilable:
                    await client.chat.completions.create(
                        model="tiny",
                        messages=HI,
                        response_format={
                            "type": "json_schema",
                            "json_schema": {"name": "x", "schema": {"not": {"type": "null"}}},
                        },
                    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    streamed_tokens = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed_tokens] == [t.token for t in content]
    assert [t.logprob for t in streamed_tokens] == pytest.approx([t.logprob for t in content])
    lp = legacy.choices[0].logprobs
    # token -> logprob maps: alternatives that decode alike (partial bytes) share a key
    assert len(lp.tokens) == 4 and all(1 <= len(alts) <= 3 for alts in lp.top_logprobs)
    assert all(lp.top_logprobs[i][t] == lp.token_logprobs[i] for i, t in enumerate(lp.tokens))
    assert lp.text_offset[0] == 0 and "".join(lp.tokens) == legacy.choices[0].text
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.usage.completion_tokens == sum(4 for _ in several.choices)
    assert refused.value.status_code == 400
    assert refused.value.body["code"] == "unsupported_parameter"
    assert refused.value.body["param"] == "tool_choice"
    assert uncompilable.value.body["code"] == "unsupported_parameter"
    assert '"not"' in uncompilable.value.body["message"]
