"""The local continuous-batching engine over a scripted StepModel (no torch)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio

from atomr_infer_core import (
    Deployment,
    ExecuteBatch,
    FinishReason,
    Message,
    RequestKind,
    RuntimeKind,
    SamplingParams,
    SequenceOutput,
    Serving,
    SessionRebuildCause,
    StepModel,
    Tokens,
    TokenUsage,
    TransportKind,
)
from atomr_infer_core.errors import (
    BadRequestError,
    DrainingError,
    SessionPoisonedError,
)
from atomr_infer_runtimes._batching import LocalEngineRunner


class ScriptedModel:
    """Emits ``"<prompt>:<i> "`` for token i; a prompt of ``"boom"`` breaks the step."""

    runtime_kind = RuntimeKind("mock")
    transport_kind = TransportKind.LOCAL_CPU
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION, RequestKind.EMBEDDING})

    def __init__(self, max_batch_size: int = 64) -> None:
        self.max_batch_size = max_batch_size
        self.seqs: dict[str, list] = {}
        self.calls: list[tuple[list[str], list[str], int]] = []
        self.embed_calls: list[list[str]] = []
        self.rebuilds: list[SessionRebuildCause] = []
        self.loaded = 0
        self.threads: set[int] = set()
        #: steps running now, and the most that ever ran at once
        self.in_step = 0
        self.peak_in_step = 0
        self._step_lock = threading.Lock()
        self.step_gate: threading.Event | None = None

    def load(self) -> None:
        self.loaded += 1

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        return len(batch.prompt_text().split())

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        with self._step_lock:
            self.threads.add(threading.get_ident())
            self.in_step += 1
            self.peak_in_step = max(self.peak_in_step, self.in_step)
        try:
            return self._step(joining, leaving)
        finally:
            with self._step_lock:
                self.in_step -= 1

    def _step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        if self.step_gate is not None:
            self.step_gate.wait(5)
        for seq_id in leaving:
            del self.seqs[seq_id]
        for seq_id, batch in joining:
            self.seqs[seq_id] = [batch, 0]
        self.calls.append(([j for j, _ in joining], list(leaving), len(self.seqs)))
        if any(b.prompt_text() == "boom" for b, _ in self.seqs.values()):
            raise RuntimeError("device lost")
        outputs = []
        for seq_id, state in list(self.seqs.items()):
            batch, i = state
            state[1] = i + 1
            done = state[1] >= (batch.sampling.max_tokens or 4)
            outputs.append(
                SequenceOutput(
                    seq_id=seq_id,
                    text_delta=f"{batch.prompt_text()}:{i} ",
                    new_tokens=1,
                    finish_reason=FinishReason.LENGTH if done else None,
                    usage=TokenUsage(input_tokens=self.prompt_tokens(batch), output_tokens=i + 1)
                    if done
                    else None,
                )
            )
            if done:
                del self.seqs[seq_id]
        return outputs

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        self.embed_calls.append(list(inputs))
        return [[float(len(t)), 1.0][: dimensions or 2] for t in inputs]

    def rebuild(self, cause: SessionRebuildCause) -> None:
        self.rebuilds.append(cause)
        self.seqs.clear()


def _deployment(max_concurrent: int = 32) -> Deployment:
    return Deployment(
        name="local",
        model="scripted",
        runtime="mock",
        serving=Serving(max_concurrent=max_concurrent),
    )


def _completion(prompt: str, max_tokens: int = 4) -> ExecuteBatch:
    return ExecuteBatch(
        request_id=f"r-{prompt}",
        model="local",
        kind="completion",
        prompt=prompt,
        sampling=SamplingParams(max_tokens=max_tokens),
    )


async def _collect(runner: LocalEngineRunner, batch: ExecuteBatch) -> Tokens:
    async with runner.execute(batch) as chunks:
        return Tokens.from_chunks([c async for c in chunks])


def test_scripted_model_meets_the_protocol() -> None:
    assert isinstance(ScriptedModel(), StepModel)


async def test_single_request_streams_every_step_and_reports_usage() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment())
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert model.loaded == 1
        async with runner.execute(_completion("a b", max_tokens=3)) as chunks:
            seen = [c async for c in chunks]
        nursery.cancel_scope.cancel()
    assert [c.text_delta for c in seen] == ["a b:0 ", "a b:1 ", "a b:2 "]
    assert seen[-1].finish_reason is FinishReason.LENGTH
    assert seen[-1].usage == TokenUsage(input_tokens=2, output_tokens=3)
    assert runner.active_count == 0
    health = runner.health()
    assert health["steps"] == 3 and health["active"] == 0 and health["transport"] == "local_cpu"


async def test_concurrent_requests_share_steps_and_get_their_own_output() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment())
    results: dict[str, Tokens] = {}

    async def one(prompt: str, n: int) -> None:
        results[prompt] = await _collect(runner, _completion(prompt, max_tokens=n))

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with trio.open_nursery() as requests:
            for i in range(16):
                requests.start_soon(one, f"p{i}", 2 + i % 5)
        nursery.cancel_scope.cancel()
    for i in range(16):
        n = 2 + i % 5
        assert results[f"p{i}"].text == "".join(f"p{i}:{k} " for k in range(n))
        assert results[f"p{i}"].usage.output_tokens == n
    assert runner.peak_batch > 1
    assert len(model.calls) < sum(2 + i % 5 for i in range(16))
    # every step ran on a worker thread, never on trio's, and never two at once
    assert model.threads and threading.get_ident() not in model.threads
    assert model.peak_in_step == 1


async def test_max_concurrent_bounds_active_sequences() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment(max_concurrent=3))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with trio.open_nursery() as requests:
            for i in range(8):
                requests.start_soon(_collect, runner, _completion(f"q{i}", max_tokens=3))
        nursery.cancel_scope.cancel()
    assert max(active for _, _, active in model.calls) == 3
    assert runner.peak_batch == 3


async def test_step_token_budget_limits_joiners_per_step() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment(), step_token_budget=4)
    gate = threading.Event()
    model.step_gate = gate
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with trio.open_nursery() as requests:
            # the first request's step blocks until all five are queued
            requests.start_soon(_collect, runner, _completion("w0 w0 w0", max_tokens=2))
            await trio.testing.wait_all_tasks_blocked()
            for i in range(1, 5):
                requests.start_soon(_collect, runner, _completion(f"w{i} w{i} w{i}", max_tokens=2))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        nursery.cancel_scope.cancel()
    # three prompt tokens each, four per step: one joins per step
    assert [len(joining) for joining, _, _ in model.calls if joining] == [1, 1, 1, 1, 1]


async def test_leaving_early_frees_the_slot_at_the_next_step() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment(max_concurrent=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with runner.execute(_completion("long", max_tokens=1000)) as chunks:
            first = await chunks.__anext__()
            assert first.text_delta == "long:0 "
            assert runner.active_count == 1
        short = await _collect(runner, _completion("short", max_tokens=2))
        nursery.cancel_scope.cancel()
    assert short.text == "short:0 short:1 "
    left = [leaving for _, leaving, _ in model.calls if leaving]
    assert len(left) == 1 and left[0][0].startswith("r-long#")
    assert "long" not in {b.prompt for b, _ in model.seqs.values()}


async def test_cancelled_while_waiting_never_reaches_the_model() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment(max_concurrent=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with runner.execute(_completion("holder", max_tokens=1000)) as chunks:
            await chunks.__anext__()
            with trio.move_on_after(0.01):
                await _collect(runner, _completion("impatient"))
            assert runner.waiting_count == 0
        nursery.cancel_scope.cancel()
    joined = [j for joining, _, _ in model.calls for j in joining]
    assert not any(j.startswith("r-impatient") for j in joined)


async def test_a_failing_step_fails_only_its_sequences_and_serving_resumes() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment())
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        with pytest.raises(SessionPoisonedError, match="device lost"):
            await _collect(runner, _completion("boom"))
        after = await _collect(runner, _completion("fine", max_tokens=2))
        nursery.cancel_scope.cancel()
    assert model.rebuilds == [SessionRebuildCause.SESSION_POISONED]
    assert after.text == "fine:0 fine:1 "


async def test_embeddings_of_concurrent_requests_share_one_call() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment())
    gate = threading.Event()
    model.step_gate = gate
    results: dict[str, Tokens] = {}

    async def embed(name: str, texts: tuple[str, ...]) -> None:
        batch = ExecuteBatch(request_id=name, model="local", kind="embedding", inputs=texts)
        results[name] = await _collect(runner, batch)

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        async with trio.open_nursery() as requests:
            # a running step holds the worker thread while three embedding requests queue
            requests.start_soon(_collect, runner, _completion("gen", max_tokens=1))
            await trio.testing.wait_all_tasks_blocked()
            requests.start_soon(embed, "e1", ("a", "bb"))
            requests.start_soon(embed, "e2", ("ccc",))
            requests.start_soon(embed, "e3", ("dddd", "e"))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        nursery.cancel_scope.cancel()
    assert len(model.embed_calls) == 1
    assert sorted(model.embed_calls[0]) == ["a", "bb", "ccc", "dddd", "e"]
    assert results["e1"].embeddings == ((1.0, 1.0), (2.0, 1.0))
    assert results["e2"].embeddings == ((3.0, 1.0),)
    assert results["e3"].embeddings == ((4.0, 1.0), (1.0, 1.0))
    assert results["e3"].usage.input_tokens == 2


async def test_stopping_the_loop_fails_waiting_requests_with_draining() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment())
    with pytest.raises(DrainingError):
        async with runner.execute(_completion("early")):
            pass
    errors: list[Exception] = []

    async def waiter() -> None:
        try:
            await _collect(runner, _completion("forever", max_tokens=10**6))
        except DrainingError as exc:
            errors.append(exc)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as engine:
            await engine.start(runner.run)
            outer.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            engine.cancel_scope.cancel()
    assert len(errors) == 1 and "stopped" in str(errors[0])


async def test_unsupported_request_kind_is_a_bad_request() -> None:
    model = ScriptedModel()
    model.capabilities = frozenset({RequestKind.EMBEDDING})
    runner = LocalEngineRunner(model, _deployment())
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        chat = ExecuteBatch(request_id="c", model="local", messages=[Message(role="user")])
        with pytest.raises(BadRequestError, match="embedding"):
            async with runner.execute(chat):
                pass
        nursery.cancel_scope.cancel()


async def test_rebuild_session_fails_running_sequences_and_rebuilds() -> None:
    model = ScriptedModel()
    runner = LocalEngineRunner(model, _deployment())
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        with pytest.raises(SessionPoisonedError, match="rebuilt"):
            async with runner.execute(_completion("running", max_tokens=10**6)) as chunks:
                await chunks.__anext__()
                await runner.rebuild_session(SessionRebuildCause.MANUAL)
                async for _ in chunks:
                    pass
        assert model.rebuilds == [SessionRebuildCause.MANUAL]
        assert (await _collect(runner, _completion("x", max_tokens=1))).text == "x:0 "
        nursery.cancel_scope.cancel()
