"""ONNX Runtime running out of memory fails the step's sequences with a typed, retryable
error; the engine keeps serving and the next run gives the arenas' free memory back.

There is no GPU to exhaust where these tests run, so the session's ``run`` is wrapped to
raise onnxruntime's real ``RuntimeException`` with the BFC arena's message on one chosen
call (what the CUDA provider raises when an allocation fails); the wrapped session is the
real one otherwise. test_cuda.py holds the tests that need CUDAExecutionProvider.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

from atomr_infer_core import Deployment, ExecuteBatch, SamplingParams, Serving, Tokens
from atomr_infer_core.errors import DeviceOutOfMemoryError
from atomr_infer_onnx import OnnxCausalLM, OnnxConfig
from atomr_infer_onnx._session import is_out_of_memory
from atomr_infer_runtimes._batching import LocalEngineRunner

ARENA = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
    "running MatMul node. Name:'/h.0/attn/MatMul' Status Message: bfc_arena.cc:376 "
    "AllocateRawInternal Failed to allocate memory for requested buffer of size 1073741824"
)


class _Session:
    """The real session; its ``call``-th run (1-based) raises, every run is recorded."""

    def __init__(self, real: Any, call: int) -> None:
        self.real = real
        self.call = call
        self.runs: list[Any] = []

    def run(self, names: list[str], feed: dict[str, Any], options: Any = None) -> Any:
        self.runs.append(options)
        if len(self.runs) == self.call:
            raise RuntimeException(ARENA)
        return self.real.run(names, feed, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _model(path: Path) -> OnnxCausalLM:
    model = OnnxCausalLM(
        OnnxConfig(path=str(path), providers=("CPUExecutionProvider",)), path=str(path)
    )
    model.load()
    return model


def _batch(i: int, *, max_tokens: int = 12, **extra: Any) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=f"r{i}",
        model="tiny",
        kind="completion",
        prompt=f"the cat {i} sat on the mat " * (1 + i % 3),
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        extra=extra,
    )


def _alone(model: OnnxCausalLM, batch: ExecuteBatch) -> str:
    outputs = model.step([("solo", batch)], [])
    while outputs[-1].finish_reason is None:
        outputs += model.step([], [])
    return "".join(o.text_delta for o in outputs)


def test_only_allocation_failures_count_as_out_of_memory() -> None:
    assert is_out_of_memory(RuntimeException(ARENA))
    assert is_out_of_memory(Fail("CUDA failure 2: out of memory ; GPU=0 ; hostname=x"))
    assert is_out_of_memory(RuntimeException("CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeException("CUDA failure 700: an illegal memory access"))
    assert not is_out_of_memory(InvalidArgument("Failed to allocate memory: wrong shape"))
    assert not is_out_of_memory(MemoryError("out of memory"))


@pytest.mark.parametrize("export", ["gpt2-onnx", "gpt2-onnx-nokv"])
async def test_the_steps_sequences_fail_typed_and_a_waiting_request_is_served(
    tiny_models: dict[str, Path], export: str
) -> None:
    model = _model(tiny_models[export])
    expected = _alone(model, _batch(2))
    deployment = Deployment(
        name="tiny", model="tiny", runtime="onnx", serving=Serving(max_concurrent=2)
    )
    runner = LocalEngineRunner(model, deployment)
    failures: dict[int, DeviceOutOfMemoryError] = {}
    texts: dict[int, str] = {}

    async def one(i: int, batch: ExecuteBatch) -> None:
        try:
            async with runner.execute(batch) as chunks:
                texts[i] = Tokens.from_chunks([c async for c in chunks]).text
        except DeviceOutOfMemoryError as exc:
            failures[i] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)  # loads the model: a fresh session
        session = _Session(model.session, call=3)
        model.session = session
        async with trio.open_nursery() as requests:
            for i in range(2):
                requests.start_soon(one, i, _batch(i, max_tokens=60, ignore_eos=True))
            await trio.testing.wait_all_tasks_blocked()
            requests.start_soon(one, 2, _batch(2))  # waits: max_concurrent is 2
        nursery.cancel_scope.cancel()

    assert sorted(failures) == [0, 1]
    assert texts == {2: expected}
    error = failures[0]
    assert error.http_status == 503 and error.code == "device_out_of_memory"
    assert "serving.max_concurrent" in error.message and "max_tokens" in error.message
    assert "1073741824" not in error.message  # the allocator's report stays in the log
    assert model.session is session  # not rebuilt
    # the run after the failure (and only it) asks the arenas to shrink
    shrink = [o for o in session.runs if o is not None]
    assert len(shrink) == 1 and session.runs[3] is shrink[0]
    assert shrink[0].get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"


async def test_an_embedding_call_that_runs_out_of_memory_fails_alone(
    tiny_models: dict[str, Path],
) -> None:
    from atomr_infer_onnx import OnnxEncoder

    path = tiny_models["encoder-onnx"]
    model = OnnxEncoder(
        OnnxConfig(path=str(path), providers=("CPUExecutionProvider",)), path=str(path)
    )
    runner = LocalEngineRunner(model, Deployment(name="mini", model="mini", runtime="onnx"))

    def embedding(i: int) -> ExecuteBatch:
        return ExecuteBatch(
            request_id=f"e{i}", model="mini", kind="embedding", inputs=["a cat", "a dog"]
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)  # loads the model: a fresh session
        session = _Session(model.session, call=1)
        model.session = session
        with pytest.raises(DeviceOutOfMemoryError, match="embedding 2 texts"):
            async with runner.execute(embedding(0)) as chunks:
                [c async for c in chunks]
        async with runner.execute(embedding(1)) as chunks:
            (chunk,) = [c async for c in chunks]
        nursery.cancel_scope.cancel()
    assert chunk.embeddings is not None and len(chunk.embeddings) == 2
    assert model.session is session  # not rebuilt
    assert session.runs[0] is None and session.runs[1] is not None  # the arenas shrank
