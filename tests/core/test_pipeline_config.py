"""``[[pipeline]]``: the DESIGN.md shapes load; every mistake names its key path."""

from __future__ import annotations

from typing import Any

import pytest

from atomr_infer_core import BalanceStrategy, EscalateWhen, PipelineKind
from atomr_infer_core.config import load_config
from atomr_infer_core.errors import ConfigError

DEPLOYMENTS = [
    {"name": name, "model": "mock", "runtime": "mock"}
    for name in ("local-small", "gpt-4o", "oai-east", "oai-west", "azure-eu")
]


def config(*pipelines: dict[str, Any]) -> dict[str, Any]:
    return {"deployment": DEPLOYMENTS, "pipeline": list(pipelines)}


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(data, env={})
    return [f"{p}: {m}" for p, m in info.value.problems]


def test_design_shapes_load_with_their_defaults() -> None:
    loaded = load_config(
        config(
            {
                "name": "smart",
                "kind": "cascade",
                "steps": ["local-small", "gpt-4o"],
                "escalate_when": ["length", "refusal", "invalid_json", "low_confidence"],
                "min_mean_logprob": -1.0,
            },
            {
                "name": "gpt-4o-any",
                "kind": "balance",
                "members": ["oai-east", "oai-west", "azure-eu"],
                "strategy": "latency",
            },
            {"name": "plain", "kind": "cascade", "steps": ["local-small", "gpt-4o-any"]},
            {
                "name": "split",
                "kind": "balance",
                "members": ["oai-east", "oai-west"],
                "strategy": "weighted",
                "weights": [3, 1],
            },
        ),
        env={},
    )
    smart, any_, plain, split = loaded.pipelines
    assert smart.kind is PipelineKind.CASCADE
    assert smart.escalations == tuple(EscalateWhen)
    assert smart.threshold == -1.0
    assert any_.balance_strategy is BalanceStrategy.LATENCY
    assert any_.member_weights() == (1.0, 1.0, 1.0)
    # the defaults: length, refusal and invalid_json; min_mean_logprob -1.0
    assert plain.escalations == (
        EscalateWhen.LENGTH,
        EscalateWhen.REFUSAL,
        EscalateWhen.INVALID_JSON,
    )
    assert plain.threshold == -1.0
    assert split.member_weights() == (3.0, 1.0)
    assert loaded.pipeline("split") is split


def test_a_step_naming_nothing_is_named_by_its_path() -> None:
    data = config({"name": "smart", "kind": "cascade", "steps": ["local-small", "x"]})
    assert errors_of(data) == ["pipeline[0].steps[1]: no deployment named 'x'"]


def test_a_pipeline_may_not_take_a_deployments_name() -> None:
    data = config({"name": "gpt-4o", "kind": "balance", "members": ["oai-east", "oai-west"]})
    assert errors_of(data) == [
        "pipeline[0].name: 'gpt-4o' is a deployment's name too; rename one of them"
    ]


def test_nesting_is_refused_except_a_balance_as_a_cascade_step() -> None:
    data = config(
        {"name": "a", "kind": "cascade", "steps": ["local-small", "b"]},
        {"name": "b", "kind": "cascade", "steps": ["gpt-4o", "a"]},
        {"name": "c", "kind": "balance", "members": ["oai-east", "d"]},
        {"name": "d", "kind": "balance", "members": ["oai-east", "oai-west"]},
    )
    assert errors_of(data) == [
        "pipeline[0].steps[1]: 'b' is a cascade; a cascade step names a deployment or a "
        "balance pipeline",
        "pipeline[1].steps[1]: 'a' is a cascade; a cascade step names a deployment or a "
        "balance pipeline",
        "pipeline[2].members[1]: 'd' is a pipeline; a balance member names a deployment",
    ]


def test_keys_of_the_other_kind_and_bad_values_are_refused() -> None:
    data = config(
        {"name": "one", "kind": "cascade", "steps": ["gpt-4o"], "members": ["oai-east"]},
        {
            "name": "two",
            "kind": "balance",
            "members": ["oai-east", "oai-east"],
            "escalate_when": ["length"],
            "weights": [1, 2],
        },
        {
            "name": "three",
            "kind": "balance",
            "members": ["oai-east", "oai-west"],
            "strategy": "weighted",
            "weights": [1, 0, 2],
        },
        {"name": "three", "kind": "cascade", "steps": ["gpt-4o", "local-small"]},
    )
    assert errors_of(data) == [
        "pipeline[0].steps: a cascade needs at least two steps (got 1)",
        "pipeline[0].members: applies to kind = 'balance' only; a cascade lists steps",
        "pipeline[1].members[1]: 'oai-east' is listed twice (also members[0])",
        "pipeline[1].escalate_when: applies to kind = 'cascade' only; a balance lists members",
        "pipeline[1].weights: applies to strategy = 'weighted' only",
        "pipeline[2].weights: needs one weight per member (2), got 3",
        "pipeline[2].weights[1]: must be > 0 (got 0)",
        "pipeline[3].name: duplicate pipeline name 'three' (also pipeline[2])",
    ]


def test_type_errors_and_unknown_keys_name_their_path() -> None:
    data = config(
        {
            "name": "smart",
            "kind": "cascade",
            "steps": ["local-small", "gpt-4o"],
            "escalate_when": ["length", "too_long"],
            "min_mean_logprob": 0.5,
        },
        {"name": "b", "kind": "balanse", "members": []},
        {"name": "c", "kind": "balance", "members": ["oai-east", "oai-west"], "stratgy": "x"},
    )
    problems = errors_of(data)
    assert problems[0] == (
        "pipeline[0].escalate_when[1]: must be one of 'length', 'refusal', 'invalid_json', "
        "'low_confidence' (got 'too_long')"
    )
    assert "pipeline[1].kind: must be one of 'cascade', 'balance' (got 'balanse')" in problems
    assert "pipeline[2].stratgy: unknown key; did you mean 'strategy'?" in problems


def test_min_mean_logprob_is_at_most_zero() -> None:
    data = config(
        {
            "name": "smart",
            "kind": "cascade",
            "steps": ["local-small", "gpt-4o"],
            "min_mean_logprob": 0.5,
        }
    )
    assert errors_of(data) == ["pipeline[0].min_mean_logprob: must be <= 0.0 (got 0.5)"]
