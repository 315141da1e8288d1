"""The remote engine against the mock OpenAI server over real loopback HTTP.

A twenty-line provider below speaks just enough of OpenAI's wire to drive the engine;
the full wire mapping is the openai plugin's and is tested there.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from atomr_infer_core import (
    CircuitBreakerConfig,
    Deployment,
    ExecuteBatch,
    JitterKind,
    Message,
    RateLimits,
    RetryPolicy,
    Secret,
    Serving,
    Timeouts,
    TokenChunk,
    Tokens,
    TokenUsage,
)
from atomr_infer_core.errors import (
    CircuitOpenError,
    ContextLengthExceededError,
    InferenceError,
    MalformedStreamError,
    NetworkError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    UnauthorizedError,
)
from atomr_infer_remote import (
    CallableCredential,
    ProviderRequest,
    RateLimiter,
    RemoteEngine,
    SSEEvent,
    StaticCredential,
)
from atomr_infer_testkit import MockOpenAIServer, mock_openai


# -- a minimal provider ---------------------------------------------------------------
def _usage(raw: Any) -> TokenUsage | None:
    if not raw:
        return None
    return TokenUsage(input_tokens=raw["prompt_tokens"], output_tokens=raw["completion_tokens"])


@attrs.define
class _Parser:
    rid: str
    finished: bool = False

    def feed(self, event: SSEEvent) -> Sequence[TokenChunk]:
        if event.data == "[DONE]":
            self.finished = True
            return ()
        obj = json.loads(event.data)
        out = [
            TokenChunk(request_id=self.rid, text_delta=c["delta"].get("content") or "")
            for c in obj["choices"]
            if c["delta"].get("content")
        ]
        if _usage(obj.get("usage")):
            out.append(TokenChunk(request_id=self.rid, usage=_usage(obj["usage"])))
        return out

    def end(self) -> Sequence[TokenChunk]:
        return ()


@attrs.define
class MiniOpenAI:
    base_url: str
    name: str = "openai"

    def build_request(self, batch: ExecuteBatch, credential: Secret | None) -> ProviderRequest:
        body: dict[str, Any] = {
            "model": batch.model,
            "messages": [{"role": str(m.role), "content": m.text} for m in batch.messages or ()],
        }
        if batch.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        headers = {"authorization": f"Bearer {credential.reveal()}"} if credential else {}
        return ProviderRequest(
            url=f"{self.base_url}/v1/chat/completions",
            headers=headers,
            json=body,
            stream=batch.stream,
        )

    def parse_response(self, batch: ExecuteBatch, body: Any) -> Sequence[TokenChunk]:
        text = body["choices"][0]["message"]["content"]
        return [
            TokenChunk(request_id=batch.request_id, text_delta=text, usage=_usage(body["usage"]))
        ]

    def stream_parser(self, batch: ExecuteBatch) -> _Parser:
        return _Parser(batch.request_id)

    def refine_error(self, status: int, body: Any) -> InferenceError | None:
        return None


# -- fixtures -------------------------------------------------------------------------
def _deployment(**kw: Any) -> Deployment:
    kw.setdefault("retry", RetryPolicy(max_retries=3, initial_backoff=1.0, jitter=JitterKind.NONE))
    return Deployment(name="chat", model="gpt-4o-mini", **kw)


def _batch(text: str = "hello world", *, stream: bool = False, **kw: Any) -> ExecuteBatch:
    return ExecuteBatch(
        request_id="r1",
        model="gpt-4o-mini",
        messages=[Message(role="user", content=text)],
        stream=stream,
        **kw,
    )


@asynccontextmanager
async def _engine(
    server: MockOpenAIServer, deployment: Deployment | None = None, **kw: Any
) -> AsyncIterator[RemoteEngine]:
    kw.setdefault("credentials", StaticCredential(Secret("sk-test")))
    engine = RemoteEngine(
        MiniOpenAI(server.url), deployment=deployment or _deployment(), rng=random.Random(0), **kw
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        yield engine
        nursery.cancel_scope.cancel()


async def _collect(engine: RemoteEngine, batch: ExecuteBatch) -> tuple[list[TokenChunk], Tokens]:
    chunks: list[TokenChunk] = []
    async with engine.submit(batch) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks, Tokens.from_chunks(chunks)


# -- happy paths ----------------------------------------------------------------------
async def test_json_answer_exact_text_and_usage() -> None:
    async with mock_openai() as server, _engine(server) as engine:
        _, tokens = await _collect(engine, _batch())
        stats = engine.statistics()
    assert tokens.text == "Echo: hello world"
    assert tokens.usage == TokenUsage(input_tokens=2, output_tokens=3)
    assert server.requests[0].headers["authorization"] == "Bearer sk-test"
    assert (stats.completed, stats.in_flight, stats.queued, stats.retries) == (1, 0, 0, 0)


async def test_stream_exact_chunks_and_usage() -> None:
    async with mock_openai() as server, _engine(server) as engine:
        chunks, tokens = await _collect(engine, _batch(stream=True))
    assert [c.text_delta for c in chunks if c.text_delta] == ["Echo:", " hello", " world"]
    assert tokens.usage == TokenUsage(input_tokens=2, output_tokens=3)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert server.streams_completed == 1


# -- retries --------------------------------------------------------------------------
async def test_429_with_retry_after_waits_that_long(autojump_clock: trio.testing.MockClock) -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.inject_status(429, retry_after=7)
        start = trio.current_time()
        _, tokens = await _collect(engine, _batch())
        assert trio.current_time() - start == pytest.approx(7.0)
        assert engine.limiter.statistics().paused_for_s == 0.0
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2
    assert engine.statistics().retries == 1


async def test_5xx_retried_with_backoff_then_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.inject_5xx(2)
        start = trio.current_time()
        _, tokens = await _collect(engine, _batch())
        # no jitter: 1 s, then 2 s
        assert trio.current_time() - start == pytest.approx(3.0)
    assert tokens.text == "Echo: hello world"
    assert engine.statistics().retries == 2


async def test_retries_exhausted_raise_the_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deployment = _deployment(retry=RetryPolicy(max_retries=1, jitter=JitterKind.NONE))
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.inject_5xx(2, status=502)
        with pytest.raises(ServerError) as info:
            await _collect(engine, _batch())
    assert info.value.status == 502
    assert info.value.deployment == "chat"
    assert len(server.requests) == 2
    assert engine.statistics().failed == {"server_error": 1}


async def test_non_idempotent_deployment_is_not_retried() -> None:
    async with mock_openai() as server, _engine(server, _deployment(idempotent=False)) as engine:
        server.inject_5xx(1)
        with pytest.raises(ServerError):
            await _collect(engine, _batch())
    assert len(server.requests) == 1


async def test_breaker_opens_after_5xx_then_fails_fast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deployment = _deployment(
        retry=RetryPolicy(max_retries=0),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, open_duration=30.0),
    )
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.inject_5xx(5)
        for _ in range(2):
            with pytest.raises(ServerError):
                await _collect(engine, _batch())
        with pytest.raises(CircuitOpenError) as info:
            await _collect(engine, _batch())
        assert len(server.requests) == 2  # the third never left
        assert info.value.retry_after == pytest.approx(30.0)
        assert engine.statistics().breaker.state == "open"
        await trio.sleep(30.0)
        assert server.clear_faults() == 3  # two answered, the third never left
        _, tokens = await _collect(engine, _batch())  # the half-open probe succeeds
    assert tokens.text == "Echo: hello world"
    assert engine.statistics().breaker.state == "closed"


async def test_breaker_ignores_4xx() -> None:
    deployment = _deployment(circuit_breaker=CircuitBreakerConfig(failure_threshold=1))
    async with mock_openai(context_window=1) as server, _engine(server, deployment) as engine:
        for _ in range(3):
            with pytest.raises(ContextLengthExceededError):
                await _collect(engine, _batch())
    assert engine.statistics().breaker.state == "closed"
    assert len(server.requests) == 3  # never retried, never short-circuited


# -- credentials ----------------------------------------------------------------------
async def test_401_once_rebuilds_session_and_succeeds() -> None:
    keys = iter(["sk-old", "sk-new"])

    async def fetch() -> str:
        return next(keys)

    async with mock_openai() as server:
        server.require_api_key("sk-new")
        async with _engine(server, credentials=CallableCredential(fetch)) as engine:
            _, tokens = await _collect(engine, _batch())
            stats = engine.statistics()
    assert tokens.text == "Echo: hello world"
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer sk-old",
        "Bearer sk-new",
    ]
    assert stats.session_rebuilds == 1


async def test_401_after_rebuild_is_raised() -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.require_api_key("sk-other")
        with pytest.raises(UnauthorizedError):
            await _collect(engine, _batch())
    assert len(server.requests) == 2


# -- typed errors ---------------------------------------------------------------------
async def test_context_length_is_typed_and_raised_on_enter() -> None:
    async with mock_openai(context_window=1) as server, _engine(server) as engine:
        with pytest.raises(ContextLengthExceededError):
            async with engine.submit(_batch()):
                pytest.fail("the error comes from __aenter__")  # pragma: no cover
    assert len(server.requests) == 1


async def test_mid_stream_drop_raises_after_the_chunks_without_repeating() -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.drop_after(3)  # the role frame, then "Echo:" and " hello"
        texts: list[str] = []
        with pytest.raises(NetworkError):
            async with engine.submit(_batch("hello big world", stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
    assert texts == ["Echo:", " hello"]
    assert len(server.requests) == 1  # output had started: no retry


async def test_malformed_stream_after_output_is_typed() -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.malformed_after(2)
        texts: list[str] = []
        with pytest.raises(MalformedStreamError):
            async with engine.submit(_batch(stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
    assert texts == ["Echo:"]


# -- timeouts and cancellation ----------------------------------------------------------
async def test_slow_first_byte_times_out_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deployment = _deployment(timeouts=Timeouts(request_timeout=5.0))
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.slow_first_byte(60.0)
        start = trio.current_time()
        with pytest.raises(RequestTimeoutError) as info:
            await _collect(engine, _batch())
        assert trio.current_time() - start == pytest.approx(5.0)
    assert info.value.phase == "first_byte"
    assert len(server.requests) == 1


async def test_slow_first_byte_then_retry_within_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a stall before output is retried; the whole thing stays inside request_timeout
    deployment = _deployment(timeouts=Timeouts(request_timeout=30.0, read_timeout=2.0))
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.stall_after(1)
        start = trio.current_time()
        _, tokens = await _collect(engine, _batch(stream=True))
        # 2 s read timeout, then 1 s backoff
        assert trio.current_time() - start == pytest.approx(3.0)
    assert tokens.text == "Echo: hello world"
    assert len(server.requests) == 2


async def test_stall_after_output_is_a_read_timeout(autojump_clock: trio.testing.MockClock) -> None:
    deployment = _deployment(timeouts=Timeouts(read_timeout=4.0))
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.stall_after(2)
        texts: list[str] = []
        with pytest.raises(RequestTimeoutError) as info:
            async with engine.submit(_batch(stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
                    start = trio.current_time()
        assert trio.current_time() - start == pytest.approx(4.0)
    assert texts == ["Echo:"]
    assert info.value.phase == "read"


async def test_leaving_a_stream_early_closes_the_upstream_response() -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.stall_after(2)
        async with engine.submit(_batch(stream=True)) as stream:
            async for _ in stream:
                break
        # __aexit__ returned: the upstream connection is already closed
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
        assert engine.statistics().in_flight == 0
    assert server.aborted_streams == 1


async def test_cancelling_the_caller_closes_the_upstream_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.stall_after(2)
        texts: list[str] = []
        with trio.move_on_after(1.0) as scope:
            async with engine.submit(_batch(stream=True)) as stream:
                async for chunk in stream:
                    texts.append(chunk.text_delta)
        assert scope.cancelled_caught
        assert engine.statistics().in_flight == 0
        with trio.fail_after(5):
            await server.wait_for_aborted_streams(1)
    assert texts == ["Echo:"]
    assert engine.statistics().failed == {}


async def test_queue_wait_is_bounded_by_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deployment = _deployment(
        serving=Serving(max_concurrent=1), timeouts=Timeouts(request_timeout=10.0)
    )
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.slow_first_byte(8.0)
        results: list[Any] = []

        async def first() -> None:
            results.append((await _collect(engine, _batch()))[1].text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RequestTimeoutError) as info:
                await _collect(engine, _batch(deadline=trio.current_time() + 3.0))
        assert info.value.phase == "queue"
        assert results == ["Echo: hello world"]


# -- rate limits ----------------------------------------------------------------------
async def test_shared_limiter_is_asked_for_retries_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(RateLimits(requests_per_minute=100), name="chat")
    async with mock_openai() as server, _engine(server, limiter=limiter) as engine:
        server.inject_5xx(2)
        await _collect(engine, _batch())
    # admission took the first attempt's permit; the engine took one per retry
    assert limiter.statistics().granted == 2


async def test_own_limiter_takes_a_permit_per_attempt() -> None:
    deployment = _deployment(rate_limits=RateLimits(requests_per_minute=2))
    async with mock_openai() as server, _engine(server, deployment) as engine:
        await _collect(engine, _batch())
        await _collect(engine, _batch())
        assert engine.limiter.statistics().granted == 2


async def test_a_body_of_the_wrong_shape_is_malformed_not_a_crash() -> None:
    deployment = _deployment(idempotent=False)
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.inject_status(200, body={"choices": []})  # parse_response indexes choices[0]
        with pytest.raises(MalformedStreamError):
            await _collect(engine, _batch())
        _, tokens = await _collect(engine, _batch())  # the engine still serves
    assert tokens.text == "Echo: hello world"


async def test_a_malformed_body_before_output_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.inject_status(200, body={"choices": []})
        _, tokens = await _collect(engine, _batch())
    assert tokens.text == "Echo: hello world"
    assert engine.statistics().retries == 1


# -- the queue ------------------------------------------------------------------------
async def test_submit_before_run_is_draining() -> None:
    from atomr_infer_core.errors import DrainingError

    engine = RemoteEngine(MiniOpenAI("http://127.0.0.1:9"), StaticCredential(None), _deployment())
    with pytest.raises(DrainingError):
        async with engine.submit(_batch()):
            pass  # pragma: no cover


async def test_priority_then_fifo_and_queued_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from atomr_infer_core import Priority

    deployment = _deployment(serving=Serving(max_concurrent=1))
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.slow_first_byte(5.0)  # holds the only worker slot
        order: list[str] = []

        async def ask(text: str, priority: Priority) -> None:
            _, tokens = await _collect(engine, _batch(text, priority=priority))
            order.append(tokens.text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "blocker", Priority.NORMAL)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "low", Priority.BACKGROUND)
            nursery.start_soon(ask, "normal", Priority.NORMAL)
            doomed = trio.CancelScope()
            nursery.start_soon(_cancellable, engine, doomed)
            nursery.start_soon(ask, "high", Priority.HIGH)
            await trio.testing.wait_all_tasks_blocked()
            assert engine.statistics().queued == 4
            doomed.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert engine.statistics().queued == 3
    assert order == ["Echo: blocker", "Echo: high", "Echo: normal", "Echo: low"]
    assert len(server.requests) == 4  # the cancelled one never went out


async def _cancellable(engine: RemoteEngine, scope: trio.CancelScope) -> None:
    with scope:
        await _collect(engine, _batch("doomed"))


async def test_upstream_sees_the_close_within_100ms_of_leaving() -> None:
    async with mock_openai() as server, _engine(server) as engine:
        server.stall_after(2)
        async with engine.submit(_batch(stream=True)) as stream:
            async for _ in stream:
                break
        left = trio.current_time()
        await server.wait_for_aborted_streams(1)
        assert trio.current_time() - left < 0.1


async def test_upstream_429_pauses_the_limiter_for_other_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deployment = _deployment(retry=RetryPolicy(max_retries=0))
    async with mock_openai() as server, _engine(server, deployment) as engine:
        server.inject_status(429, retry_after=6)
        with pytest.raises(RateLimitedError) as info:
            await _collect(engine, _batch())
        assert info.value.retry_after == 6
        assert engine.limiter.statistics().paused_for_s == pytest.approx(6.0)
        start = trio.current_time()
        await _collect(engine, _batch())  # waits for the pause to end
        assert trio.current_time() - start == pytest.approx(6.0)


async def test_rebuild_between_runs_is_a_no_op_and_the_next_run_serves() -> None:
    """A replica restarting after a crash calls rebuild_session before run() again."""
    from atomr_infer_core import SessionRebuildCause

    async with mock_openai() as server:
        engine = RemoteEngine(
            MiniOpenAI(server.url),
            deployment=_deployment(),
            rng=random.Random(0),
            credentials=StaticCredential(Secret("sk-test")),
        )
        await engine.rebuild_session(SessionRebuildCause.REPLICA_RESTART)
        for _ in range(2):  # crash-restart: run, stop, rebuild, run again
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                _, tokens = await _collect(engine, _batch())
                nursery.cancel_scope.cancel()
            await engine.rebuild_session(SessionRebuildCause.REPLICA_RESTART)
    assert tokens.text == "Echo: hello world"
