"""``/v1/completions`` with a list of prompts, through the gateway, as the openai SDK sends it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai
import pytest
import trio

import atomr_infer_openai._plugin as openai_plugin
from atomr_infer_core.config import load_config
from atomr_infer_runtimes import open_cluster
from atomr_infer_runtimes.gateway import open_gateway
from atomr_infer_testkit import MockOpenAIServer, mock_openai


@asynccontextmanager
async def _gateway() -> AsyncIterator[tuple[openai.OpenAI, MockOpenAIServer]]:
    async with mock_openai() as server:
        deployment = {
            "name": "text",
            "model": "gpt-4o-mini",
            "retry": {"max_retries": 0},
            "runtime_config": {"base_url": f"{server.url}/v1", "api_key": "sk-mock"},
        }
        config = load_config({"cluster": {"bind": "127.0.0.1:0"}, "deployment": [deployment]})
        async with (
            open_cluster(config, plugins=[openai_plugin], load_entry_points=False) as cluster,
            open_gateway(cluster) as url,
        ):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            yield client, server


async def test_a_list_of_prompts_gets_one_choice_each_and_the_summed_usage() -> None:
    async with _gateway() as (client, server):
        reply = await trio.to_thread.run_sync(
            lambda: client.completions.create(model="text", prompt=["one two", "three"])
        )
    assert [(c.index, c.text, c.finish_reason) for c in reply.choices] == [
        (0, "Echo: one two", "stop"),
        (1, "Echo: three", "stop"),
    ]
    # the mock counts words: prompts 2 + 1, answers 3 + 2
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 5)
    assert sorted(r.json["prompt"] for r in server.requests) == ["one two", "three"]


async def test_a_streamed_list_of_prompts_names_each_choice_by_index() -> None:
    async with _gateway() as (client, _):

        def stream() -> tuple[dict[int, str], object]:
            texts: dict[int, str] = {}
            usage = None
            for event in client.completions.create(
                model="text",
                prompt=["alpha beta", "gamma"],
                stream=True,
                stream_options={"include_usage": True},
            ):
                for choice in event.choices:
                    texts[choice.index] = texts.get(choice.index, "") + choice.text
                usage = event.usage or usage
            return texts, usage

        texts, usage = await trio.to_thread.run_sync(stream)
    assert texts == {0: "Echo: alpha beta", 1: "Echo: gamma"}
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 5)


async def test_one_failing_prompt_fails_the_request_with_its_status() -> None:
    async with _gateway() as (client, server):
        server.inject_status(400, body={"error": {"message": "bad prompt", "type": "x"}})
        with pytest.raises(openai.BadRequestError):
            await trio.to_thread.run_sync(
                lambda: client.completions.create(model="text", prompt=["a", "b"])
            )


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([1, 2, 3], "token arrays are not supported"),
        ([], "must not be empty"),
        (["a", 3], "a string or an array of strings"),
    ],
)
async def test_prompts_that_are_not_strings_are_400(prompt: object, message: str) -> None:
    async with _gateway() as (client, server):
        with pytest.raises(openai.BadRequestError) as caught:
            await trio.to_thread.run_sync(
                lambda: client.completions.create(model="text", prompt=prompt)  # type: ignore[arg-type]
            )
    assert message in str(caught.value)
    assert caught.value.body["param"] == "prompt"  # type: ignore[index]
    assert server.requests == []


async def test_many_prompts_run_a_few_at_a_time_in_order() -> None:
    from atomr_infer_runtimes.gateway._prompts import PROMPT_CONCURRENCY

    prompts = [f"prompt {i}" for i in range(3 * PROMPT_CONCURRENCY)]
    async with _gateway() as (client, server):
        for _ in prompts:  # every answer takes a while: all would overlap if they could
            server.slow_first_byte(0.2)
        reply = await trio.to_thread.run_sync(
            lambda: client.completions.create(model="text", prompt=prompts)
        )
    assert [c.text for c in reply.choices] == [f"Echo: {p}" for p in prompts]
    assert len(server.requests) == len(prompts)
    assert server.peak_in_flight == PROMPT_CONCURRENCY
