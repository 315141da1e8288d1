"""The pure pipeline cores: cascade escalation, the JSON check, the balance strategies."""

from __future__ import annotations

import collections
import random

import pytest

from atomr_infer_core import (
    Choice,
    ExecuteBatch,
    FinishReason,
    Message,
    Pipeline,
    Tokens,
)
from atomr_infer_core.errors import (
    BadRequestError,
    ContentFilteredError,
    ContextLengthExceededError,
    ServerError,
)
from atomr_infer_runtimes import _execution
from atomr_infer_runtimes._json_check import json_problem, schema_problem
from atomr_infer_runtimes._pipelines import (
    DECAY_HALF_LIFE_S,
    ERROR_PENALTY_S,
    EWMA_ALPHA,
    REQUEST_ERRORS,
    Balancer,
    MemberView,
    escalation,
    mean_logprob,
    step_error_escalation,
)

HI = (Message(role="user", content="hi"),)


def cascade(**kw: object) -> Pipeline:
    return Pipeline(name="smart", kind="cascade", steps=("a", "b"), **kw)  # type: ignore[arg-type]


def balance(strategy: str = "latency", **kw: object) -> Pipeline:
    return Pipeline(
        name="any",
        kind="balance",
        members=("east", "west", "eu"),
        strategy=strategy,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def batch(**kw: object) -> ExecuteBatch:
    return ExecuteBatch(request_id="r", model="smart", messages=HI, **kw)  # type: ignore[arg-type]


def answer(text: str = "ok", finish: FinishReason = FinishReason.STOP, **kw: object) -> Tokens:
    return Tokens(choices=(Choice(text=text, finish_reason=finish, **kw),))  # type: ignore[arg-type]


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "n",
        "schema": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 1}},
            "required": ["n"],
            "additionalProperties": False,
        },
    },
}

# -- cascade -----------------------------------------------------------------------


def test_length_escalates_and_a_normal_stop_does_not() -> None:
    found = escalation(cascade(), batch(), answer(finish=FinishReason.LENGTH))
    assert found is not None and found.reason == "length"
    assert escalation(cascade(), batch(), answer()) is None


def test_only_listed_conditions_escalate() -> None:
    only_json = cascade(escalate_when=["invalid_json"])
    assert escalation(only_json, batch(), answer(finish=FinishReason.LENGTH)) is None
    refused = answer(finish=FinishReason.CONTENT_FILTER)
    assert escalation(cascade(), batch(), refused).reason == "refusal"  # type: ignore[union-attr]


def test_invalid_json_against_the_requests_schema() -> None:
    asked = batch(response_format=SCHEMA)
    assert escalation(cascade(), asked, answer('{"n": 3}')) is None
    for bad in ('{"n": 3', '{"n": 0}', '{"n": "3"}', '{"n": 3, "m": 1}', "{}"):
        found = escalation(cascade(), asked, answer(bad))
        assert found is not None and found.reason == "invalid_json", bad
    # free text was asked for: any text passes
    assert escalation(cascade(), batch(), answer("not json")) is None
    assert escalation(cascade(), batch(response_format={"type": "json_object"}), answer("[]"))


def test_low_confidence_uses_the_mean_token_logprob() -> None:
    pipe = cascade(escalate_when=["low_confidence"], min_mean_logprob=-1.0)
    sure = answer(logprobs=({"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.5}))
    unsure = answer(logprobs=({"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -2.5}))
    assert escalation(pipe, batch(), sure) is None
    found = escalation(pipe, batch(), unsure)
    assert found is not None and found.reason == "low_confidence"
    assert "-1.500" in found.detail
    # no logprobs reported: the answer is not judged
    assert escalation(pipe, batch(), answer()) is None
    assert mean_logprob([]) is None


def test_step_errors_escalate_where_a_fallback_would() -> None:
    pipe = cascade()
    assert step_error_escalation(pipe, ServerError("boom")).reason == "error"  # type: ignore[union-attr]
    assert step_error_escalation(pipe, BadRequestError("bad")) is None
    assert step_error_escalation(pipe, ContextLengthExceededError("long")) is None
    assert step_error_escalation(pipe, ContentFilteredError("no")).reason == "refusal"  # type: ignore[union-attr]
    no_refusal = cascade(escalate_when=["length"])
    assert step_error_escalation(no_refusal, ContentFilteredError("no")) is None


def test_request_errors_are_the_request_paths_no_fallback_list() -> None:
    assert set(REQUEST_ERRORS) == set(_execution._NO_FALLBACK)


# -- the JSON check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "schema", "problem"),
    [
        (
            {"a": [1, 2]},
            {"properties": {"a": {"type": "array", "items": {"type": "integer"}}}},
            None,
        ),
        ({"a": [1, "x"]}, {"properties": {"a": {"items": {"type": "integer"}}}}, "$.a[1]"),
        ("b", {"enum": ["a", "b"]}, None),
        ("c", {"enum": ["a", "b"]}, "must be one of"),
        (True, {"type": "integer"}, "expected integer, got boolean"),
        (2.0, {"type": "integer"}, None),
        (None, {"type": ["string", "null"]}, None),
        ("ab", {"minLength": 3}, "minLength"),
        ("ab", {"pattern": "^a"}, None),
        (5, {"exclusiveMaximum": 5}, "exclusiveMaximum"),
        ({"x": 1}, {"anyOf": [{"required": ["y"]}, {"required": ["x"]}]}, None),
        ({}, {"anyOf": [{"required": ["y"]}, {"required": ["x"]}]}, "anyOf"),
        (1, {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "matches 2 of oneOf"),
        (
            {"p": {"q": 1}},
            {
                "$defs": {"Q": {"type": "object", "required": ["q", "r"]}},
                "properties": {"p": {"$ref": "#/$defs/Q"}},
            },
            "required property 'r'",
        ),
        ([1], {"prefixItems": [{"type": "string"}]}, "$[0]"),
        ({"x": 1}, {"additionalProperties": {"type": "string"}}, "$.x"),
    ],
)
def test_schema_problem(value: object, schema: dict, problem: str | None) -> None:
    found = schema_problem(value, schema)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_json_problem_reads_the_response_format() -> None:
    assert json_problem("x", None) is None
    assert json_problem("x", {"type": "text"}) is None
    assert "not JSON" in (json_problem("x", {"type": "json_object"}) or "")
    assert json_problem('{"a": 1}', {"type": "json_object"}) is None
    assert json_problem('{"a": 1}', {"type": "json_schema", "json_schema": {}}) is None


# -- balance -----------------------------------------------------------------------


def views(*names: str, down: tuple[str, ...] = (), load: dict[str, int] | None = None) -> list:
    return [MemberView(n, n not in down, (load or {}).get(n, 0)) for n in names]


def test_latency_average_is_a_peak_ewma_that_decays() -> None:
    b = Balancer(balance())
    b.observe("east", latency_s=0.1, ok=True, now=0.0)
    b.observe("east", latency_s=0.5, ok=True, now=0.0)  # above the average: replaces it
    assert b.latency("east", 0.0) == pytest.approx(0.5)
    b.observe("east", latency_s=0.1, ok=True, now=0.0)  # below: moves it by EWMA_ALPHA
    assert b.latency("east", 0.0) == pytest.approx(0.5 + EWMA_ALPHA * (0.1 - 0.5))
    assert b.latency("east", DECAY_HALF_LIFE_S) == pytest.approx(0.38 / 2)
    b.observe("west", latency_s=0.01, ok=False, now=0.0)
    assert b.latency("west", 0.0) == ERROR_PENALTY_S
    assert b.latency("eu", 0.0) is None


def test_latency_prefers_the_faster_member_and_skips_unusable_ones() -> None:
    b = Balancer(balance(), rng=random.Random(7))
    b.observe("east", latency_s=0.01, ok=True, now=0.0)
    b.observe("west", latency_s=0.5, ok=True, now=0.0)
    b.observe("eu", latency_s=0.2, ok=True, now=0.0)
    firsts = collections.Counter(
        b.order(views("east", "west", "eu"), 1.0)[0][0] for _ in range(300)
    )
    # two of three at random, the cheaper wins: east whenever it is drawn (2/3), else eu
    assert firsts["west"] == 0
    assert 170 <= firsts["east"] <= 230
    ranked, unusable = b.order(views("east", "west", "eu", down=("east",)), 1.0)
    assert ranked[0] == "eu" and "east" not in ranked and unusable == ["east"]


def test_latency_cost_counts_requests_in_flight() -> None:
    b = Balancer(Pipeline(name="p", kind="balance", members=("east", "west")))
    b.observe("east", latency_s=0.1, ok=True, now=0.0)
    b.observe("west", latency_s=0.3, ok=True, now=0.0)
    assert b.order(views("east", "west"), 0.0)[0] == ["east", "west"]
    assert b.order(views("east", "west", load={"east": 3}), 0.0)[0] == ["west", "east"]


def test_an_unmeasured_member_is_tried_and_a_slow_one_recovers_with_time() -> None:
    b = Balancer(Pipeline(name="p", kind="balance", members=("east", "west")))
    b.observe("east", latency_s=0.1, ok=True, now=0.0)
    assert b.order(views("east", "west"), 0.0)[0][0] == "west"
    b.observe("west", latency_s=2.0, ok=True, now=0.0)
    assert b.order(views("east", "west"), 1.0)[0][0] == "east"
    # west is not asked again; its average halves every DECAY_HALF_LIFE_S until it is cheaper
    b.observe("east", latency_s=0.1, ok=True, now=100.0)
    assert b.order(views("east", "west"), 100.0)[0][0] == "west"


def test_least_outstanding_and_its_round_robin_ties() -> None:
    b = Balancer(balance("least_outstanding"))
    assert b.order(views("east", "west", "eu", load={"east": 2, "west": 1, "eu": 1}), 0.0)[0] == [
        "west",
        "eu",
        "east",
    ]
    picks = [b.order(views("east", "west", "eu"), 0.0)[0][0] for _ in range(4)]
    assert picks == ["eu", "east", "west", "eu"]


def test_weighted_follows_the_weights() -> None:
    pipe = Pipeline(
        name="p", kind="balance", members=("east", "west"), strategy="weighted", weights=(3, 1)
    )
    b = Balancer(pipe, rng=random.Random(1))
    firsts = collections.Counter(b.order(views("east", "west"), 0.0)[0][0] for _ in range(400))
    assert 270 <= firsts["east"] <= 330
    ranked, _ = b.order(views("east", "west", down=("east",)), 0.0)
    assert ranked == ["west"]


def test_no_usable_member_leaves_them_all_to_the_end() -> None:
    b = Balancer(balance())
    assert b.order(views("east", "west", "eu", down=("east", "west", "eu")), 0.0) == (
        [],
        ["east", "west", "eu"],
    )
