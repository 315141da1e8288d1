"""Running out of device memory fails the step's sequences with a typed, retryable error,
and the engine keeps serving.

There is no GPU to exhaust on the machines these tests run on, so the model's forward is
patched to raise torch's real ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``
is the same class: what a failed CUDA allocation raises) on one chosen call. The test that
really exhausts a GPU is in test_cuda.py and runs where torch sees one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from atomr_infer_core import Deployment, ExecuteBatch, SamplingParams, Serving, Tokens
from atomr_infer_core.errors import CapacityExhaustedError, DeviceOutOfMemoryError
from atomr_infer_runtimes._batching import LocalEngineRunner
from atomr_infer_runtimes.gateway._errors import error_headers
from atomr_infer_torch import TorchCausalLM, TorchConfig

OOM = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB"


def _batch(i: int, *, max_tokens: int = 12, **extra: Any) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=f"r{i}",
        model="tiny",
        kind="completion",
        prompt=f"the cat {i} sat on the mat " * (1 + i % 3),
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        extra=extra,
    )


def _alone(model: TorchCausalLM, batch: ExecuteBatch) -> str:
    outputs = model.step([("solo", batch)], [])
    while outputs[-1].finish_reason is None:
        outputs += model.step([], [])
    return "".join(o.text_delta for o in outputs)


def _fail_call(model: TorchCausalLM, call: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the model's ``call``-th forward pass (1-based) raise the real OOM class."""
    calls = [0]
    real = model._forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            raise torch.cuda.OutOfMemoryError(OOM)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "_forward", forward)
    return calls


async def test_the_steps_sequences_fail_typed_and_a_waiting_request_is_served(
    tiny_gpt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = TorchCausalLM(TorchConfig(device="cpu", prefix_cache=False), weights=str(tiny_gpt2))
    model.load()
    expected = _alone(model, _batch(2))
    rebuilds: list[object] = []
    monkeypatch.setattr(model, "rebuild", rebuilds.append)
    released: list[None] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(None))
    # the first two requests join in one step (forward 1: prefill); forward 3 fails
    _fail_call(model, 3, monkeypatch)
    deployment = Deployment(
        name="tiny", model="tiny", runtime="torch", serving=Serving(max_concurrent=2)
    )
    runner = LocalEngineRunner(model, deployment)
    failures: dict[int, BaseException] = {}
    texts: dict[int, str] = {}

    async def one(i: int, batch: ExecuteBatch) -> None:
        try:
            async with runner.execute(batch) as chunks:
                texts[i] = Tokens.from_chunks([c async for c in chunks]).text
        except DeviceOutOfMemoryError as exc:
            failures[i] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with trio.open_nursery() as requests:
            for i in range(2):
                requests.start_soon(one, i, _batch(i, max_tokens=60, ignore_eos=True))
            await trio.testing.wait_all_tasks_blocked()
            requests.start_soon(one, 2, _batch(2))  # waits: max_concurrent is 2
        assert runner._running
        nursery.cancel_scope.cancel()

    assert sorted(failures) == [0, 1]
    assert texts == {2: expected}
    error = failures[0]
    assert isinstance(error, CapacityExhaustedError)
    assert error.http_status == 503 and error.code == "device_out_of_memory"
    assert (b"x-should-retry", b"true") in error_headers(error)
    for advice in ("serving.max_concurrent", "max_tokens", "runtime_config.dtype", "float32"):
        assert advice in error.message
    assert "20.00 GiB" not in error.message  # the allocator's report stays in the log
    assert rebuilds == []  # not a broken session: the model is not reloaded
    assert released == []  # on the CPU there is no CUDA cache to release
    assert model._rows == [] and model._mask is None


def test_a_joiner_that_runs_out_of_memory_in_prefill_fails_with_the_running_ones(
    tiny_gpt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = TorchCausalLM(TorchConfig(device="cpu"), weights=str(tiny_gpt2))
    model.load()
    model.step([("a", _batch(0, max_tokens=30))], [])
    # next step: forward 1 decodes "a", forward 2 (the shared-prefix cache or the
    # prefill of the joiners) fails; "bad" fails on its own (a prompt past the context)
    _fail_call(model, 2, monkeypatch)
    too_long = ExecuteBatch(
        request_id="long", model="tiny", kind="completion", prompt="the cat " * 200
    )
    outputs = model.step([("b", _batch(1)), ("c", _batch(2)), ("bad", too_long)], [])
    errors = {o.seq_id: o.error for o in outputs}
    assert set(errors) == {"a", "b", "c", "bad"}
    assert all(isinstance(errors[s], DeviceOutOfMemoryError) for s in "abc")
    assert not isinstance(errors["bad"], DeviceOutOfMemoryError)
    assert "3 sequence(s)" in str(errors["a"])
    assert model._rows == [] and not model._prefixes
    # the next step starts from an empty batch and decodes as a fresh model does
    fresh = TorchCausalLM(TorchConfig(device="cpu"), weights=str(tiny_gpt2))
    fresh.load()
    assert _alone(model, _batch(3)) == _alone(fresh, _batch(3))


def test_an_error_that_is_not_out_of_memory_still_breaks_the_step(
    tiny_gpt2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = TorchCausalLM(TorchConfig(device="cpu"), weights=str(tiny_gpt2))
    model.load()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(model, "_forward", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        model.step([("a", _batch(0))], [])


class _FailingOnce:
    """The encoder's real module; its first call raises the real OOM class."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise torch.cuda.OutOfMemoryError(OOM)
        return self.real(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_an_embedding_call_that_runs_out_of_memory_fails_alone(
    tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atomr_infer_torch import TorchEncoder

    model = TorchEncoder(TorchConfig(device="cpu", task="embed"), weights=str(tiny_encoder))
    rebuilds: list[object] = []
    monkeypatch.setattr(model, "rebuild", rebuilds.append)
    runner = LocalEngineRunner(model, Deployment(name="mini", model="mini", runtime="torch"))

    def embedding(i: int) -> ExecuteBatch:
        return ExecuteBatch(
            request_id=f"e{i}", model="mini", kind="embedding", inputs=["a cat", "a dog"]
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)  # loads the model
        model.model = _FailingOnce(model.model)
        with pytest.raises(DeviceOutOfMemoryError, match="embedding 2 texts") as caught:
            async with runner.execute(embedding(0)) as chunks:
                [c async for c in chunks]
        async with runner.execute(embedding(1)) as chunks:
            (chunk,) = [c async for c in chunks]
        nursery.cancel_scope.cancel()
    assert "runtime_config.dtype" in caught.value.message
    assert chunk.embeddings is not None and len(chunk.embeddings) == 2
    assert rebuilds == []
