"""``[[key]]`` tenants in the config: shape, defaults, and errors that name their path."""

from __future__ import annotations

import pytest

from atomr_infer_core import BudgetAction, ConfigError, Secret
from atomr_infer_core.config import check_config, load_config, unstructure

DEPLOYMENTS = [
    {"name": "chat", "model": "mock", "runtime": "mock"},
    {"name": "embed", "model": "mock", "runtime": "mock"},
]


def _config(*keys: dict, **cluster: object) -> dict:
    return {"cluster": dict(cluster), "deployment": DEPLOYMENTS, "key": list(keys)}


def test_a_key_table_loads_with_defaults_and_expands_variables() -> None:
    config = load_config(
        _config(
            {"name": "team-a", "key": "${TEAM_A_KEY}", "models": ["chat"], "weight": 2},
            {
                "name": "team-b",
                "key": "sk-b",
                "rate_limits": {"requests_per_minute": 100, "concurrent_requests": 4},
                "budget": {"max_spend_per_day_usd": 5.0, "on_exceeded": "warn"},
            },
        ),
        env={"TEAM_A_KEY": "sk-a"},
    )
    a, b = config.keys
    assert (a.name, a.key, a.models, a.weight, a.budget) == (
        "team-a",
        Secret("sk-a"),
        ("chat",),
        2.0,
        None,
    )
    assert a.rate_limits.unlimited
    assert (b.models, b.weight) == ((), 1.0)
    assert b.rate_limits.requests_per_minute == 100
    assert b.budget is not None and b.budget.on_exceeded is BudgetAction.WARN
    assert "sk-a" not in repr(config)
    assert unstructure(config)["key"][0]["key"] == "**********"


def test_an_unknown_model_names_its_path() -> None:
    _, problems = check_config(_config({"name": "a", "key": "k1", "models": ["chat", "nope"]}))
    assert problems == [
        ("key[0].models[1]", "no deployment or pipeline named 'nope' (known: chat, embed)")
    ]


def test_duplicate_names_and_key_strings_are_errors_that_never_print_the_key() -> None:
    _, problems = check_config(
        _config(
            {"name": "a", "key": "sk-secret-1"},
            {"name": "a", "key": "sk-secret-2"},
            {"name": "c", "key": "sk-secret-1"},
            {"name": "d", "key": "sk-cluster"},
            api_keys=["sk-cluster"],
        )
    )
    assert problems == [
        ("key[1].name", "duplicate key name 'a' (also key[0])"),
        ("key[2].key", "the same key string as key[0]; every key must be unique"),
        ("key[3].key", "the same key string as cluster.api_keys[0]; every key must be unique"),
    ]
    assert "sk-" not in repr(problems)


@pytest.mark.parametrize(
    ("table", "path", "message"),
    [
        ({"name": "a", "key": "k", "weight": 0}, "key[0].weight", "must be > 0 (got 0.0)"),
        ({"name": "a", "key": "k", "weight": "2"}, "key[0].weight", "expected a number"),
        ({"name": " ", "key": "k"}, "key[0].name", "must not be empty"),
        ({"name": "a", "key": ""}, "key[0].key", "must not be empty"),
        ({"name": "a"}, "key[0].key", "required key missing"),
        ({"name": "a", "key": "k", "modles": []}, "key[0].modles", "did you mean 'models'?"),
        (
            {"name": "a", "key": "k", "rate_limits": {"requests_per_minute": 0}},
            "key[0].rate_limits.requests_per_minute",
            "must be >= 1",
        ),
        (
            {"name": "a", "key": "k", "budget": {"on_exceeded": "explode"}},
            "key[0].budget.on_exceeded",
            "must be one of",
        ),
    ],
)
def test_bad_key_tables_name_their_path(table: dict, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(table))
    assert any(p == path and message in m for p, m in caught.value.problems), caught.value.problems


def test_a_single_key_table_must_be_an_array_of_tables() -> None:
    _, problems = check_config({"deployment": DEPLOYMENTS, "key": {"name": "a", "key": "k"}})
    assert ("key", "use [[key]] (an array of tables), not [key]") in problems
