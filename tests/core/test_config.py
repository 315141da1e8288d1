from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings, strategies as st

from atomr_infer_core import (
    Budget,
    BudgetAction,
    CapacityPolicy,
    CircuitBreakerConfig,
    ConfigError,
    Deployment,
    JitterKind,
    RateLimits,
    RetryPolicy,
    Serving,
    Timeouts,
)
from atomr_infer_core.config import (
    load_config,
    parse_duration,
    structure,
    structure_deployment,
    unstructure,
)

DESIGN_EXAMPLE = """
[cluster]
name = "production"
bind = "127.0.0.1:8080"
api_keys = ["${ATOMR_API_KEY}"]

[state]
backend = "memory"

[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
replicas = 1
idempotent = true
fallbacks = ["chat-backup"]
[deployment.serving]
max_concurrent = 32
on_capacity_exhausted = "queue"
[deployment.runtime_config]
base_url = "https://example.invalid/v1"
api_key = "${OPENAI_API_KEY}"
[deployment.rate_limits]
requests_per_minute = 500
tokens_per_minute = 200000
[deployment.retry]
max_retries = 3
initial_backoff = "1s"
[deployment.timeouts]
request_timeout = "30s"
[deployment.circuit_breaker]
failure_threshold = 5
open_duration = "30s"
[deployment.budget]
max_spend_per_hour_usd = 10.0
on_exceeded = "reject"

[[deployment]]
name = "chat-backup"
model = "claude-3-5-haiku-latest"
"""

ENV = {"ATOMR_API_KEY": "gw-key", "OPENAI_API_KEY": "sk-test"}


def errors_of(data: dict, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(data, env=env or {})
    return [f"{p}: {m}" for p, m in info.value.problems]


def test_design_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "atomr.toml"
    path.write_text(DESIGN_EXAMPLE)
    config = load_config(path, env=ENV)
    chat, backup = config.deployments
    assert config.cluster.name == "production"
    assert config.cluster.api_keys[0].reveal() == "gw-key"
    assert chat.runtime == "openai"
    assert chat.fallbacks == ("chat-backup",)
    assert chat.rate_limits == RateLimits(requests_per_minute=500, tokens_per_minute=200000)
    assert chat.retry == RetryPolicy(max_retries=3, initial_backoff=1.0)
    assert chat.circuit_breaker == CircuitBreakerConfig(failure_threshold=5, open_duration=30.0)
    assert chat.budget == Budget(max_spend_per_hour_usd=10.0, on_exceeded=BudgetAction.REJECT)
    assert chat.runtime_config == {"base_url": "https://example.invalid/v1", "api_key": "sk-test"}
    assert backup.runtime is None  # inferred from the model by the loaded plugins
    assert backup.serving == Serving()
    assert backup.timeouts == Timeouts(request_timeout=30.0, read_timeout=10.0)


def test_every_table_and_key_has_the_originals_default() -> None:
    dep = load_config({"deployment": [{"name": "a", "model": "gpt-4o"}]}).deployments[0]
    assert (dep.replicas, dep.idempotent, dep.budget, dep.fallbacks) == (1, True, None, ())
    assert (dep.serving.max_concurrent, dep.serving.on_capacity_exhausted) == (
        32,
        CapacityPolicy.QUEUE,
    )
    r = dep.retry
    assert (r.max_retries, r.initial_backoff, r.max_backoff, r.backoff_multiplier, r.jitter) == (
        3,
        1.0,
        60.0,
        2.0,
        JitterKind.EQUAL,
    )
    assert (dep.timeouts.request_timeout, dep.timeouts.read_timeout) == (30.0, 10.0)
    cb = dep.circuit_breaker
    assert (cb.failure_threshold, cb.open_duration, cb.half_open_max_probes) == (10, 30.0, 1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (1500, 1.5),
        (0, 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_range_error_names_its_path() -> None:
    assert errors_of(
        {
            "deployment": [
                {"name": "a", "model": "gpt-4o"},
                {"name": "b", "model": "gpt-4o", "serving": {"max_concurrent": 0}},
            ]
        }
    ) == ["deployment[1].serving.max_concurrent: must be >= 1 (got 0)"]


def test_unknown_key_suggests_the_closest() -> None:
    assert errors_of(
        {
            "deployment": [
                {"name": "a", "model": "gpt-4o", "circuit_breaker": {"failure_treshold": 3}}
            ]
        }
    ) == [
        "deployment[0].circuit_breaker.failure_treshold: unknown key; did you mean 'failure_threshold'?"
    ]


def test_unknown_key_without_a_close_match_lists_the_valid_ones() -> None:
    assert errors_of({"state": {"zzz": 1}}) == [
        "state.zzz: unknown key; valid keys: backend, url, sync_interval, key_prefix, mode, "
        "lease, on_unavailable, spend_ledger"
    ]


def test_fleet_state_keys_are_structured_and_checked() -> None:
    from atomr_infer_core import StateMode, UnavailablePolicy

    state = {
        "backend": "redis",
        "url": "redis://127.0.0.1:6379/0",
        "mode": "strict",
        "lease": "5s",
        "on_unavailable": "fail_open",
    }
    config = load_config({"state": state}, env={})
    assert config.state.mode is StateMode.STRICT
    assert config.state.lease == 5.0
    assert config.state.on_unavailable is UnavailablePolicy.FAIL_OPEN
    assert errors_of({"state": {"on_unavailable": "maybe"}}) == [
        "state.on_unavailable: must be one of 'fail_closed', 'fail_open' (got 'maybe')"
    ]
    [lease] = errors_of({"state": {"lease": 0}})
    assert lease.startswith("state.lease: must be > 0"), lease


def test_no_silent_coercion() -> None:
    assert errors_of(
        {
            "cluster": {"name": 80},
            "deployment": [{"name": "a", "model": "gpt-4o", "replicas": 1.5, "idempotent": "yes"}],
        }
    ) == [
        "cluster.name: expected a string, got integer 80",
        "deployment[0].replicas: expected an integer, got float 1.5",
        "deployment[0].idempotent: expected true or false, got string 'yes'",
    ]


def test_bad_enum_lists_the_allowed_values() -> None:
    assert errors_of(
        {
            "deployment": [
                {"name": "a", "model": "gpt-4o", "serving": {"on_capacity_exhausted": "drop"}}
            ]
        }
    ) == [
        "deployment[0].serving.on_capacity_exhausted: must be one of 'reject', 'queue', 'fallback' (got 'drop')"
    ]


def test_bad_duration_says_how_to_write_one() -> None:
    assert errors_of(
        {
            "deployment": [
                {"name": "a", "model": "gpt-4o", "timeouts": {"read_timeout": "30 parsecs"}}
            ]
        }
    ) == [
        "deployment[0].timeouts.read_timeout: invalid duration '30 parsecs'; use integer milliseconds or e.g. '30s', '250ms', '5m'"
    ]


def test_missing_required_key() -> None:
    assert errors_of({"deployment": [{"name": "a"}]}) == [
        "deployment[0].model: required key missing"
    ]


def test_missing_environment_variable_names_it() -> None:
    assert errors_of({"cluster": {"api_keys": ["${NOPE}"]}}) == [
        "cluster.api_keys[0]: environment variable NOPE is not set (use ${NOPE:-default})"
    ]


def test_environment_default_is_used() -> None:
    config = load_config({"cluster": {"name": "${NAME:-fallback}-x"}}, env={})
    assert config.cluster.name == "fallback-x"


def test_array_where_a_string_was_given() -> None:
    assert errors_of({"deployment": [{"name": "a", "model": "gpt-4o", "fallbacks": "b"}]}) == [
        "deployment[0].fallbacks: expected an array, got string 'b'"
    ]


def test_cross_reference_problems() -> None:
    assert errors_of(
        {
            "cluster": {"bind": "localhost"},
            "deployment": [
                {"name": "a", "model": "gpt-4o", "fallbacks": ["ghost"]},
                {"name": "a", "model": "llama-3"},
            ],
        }
    ) == [
        "deployment[0].fallbacks[0]: no deployment named 'ghost'",
        "deployment[1].name: duplicate deployment name 'a' (also deployment[0])",
        "cluster.bind: expected host:port, e.g. '127.0.0.1:8080' (got 'localhost')",
    ]


def test_fallback_policy_needs_fallbacks() -> None:
    assert errors_of(
        {
            "deployment": [
                {"name": "a", "model": "gpt-4o", "serving": {"on_capacity_exhausted": "fallback"}}
            ]
        }
    ) == [
        "deployment[0].serving.on_capacity_exhausted: is 'fallback' but the deployment lists no fallbacks"
    ]


def test_redis_backend_needs_a_url() -> None:
    assert errors_of({"state": {"backend": "redis"}}) == [
        "state.url: required when backend = 'redis' (e.g. 'redis://127.0.0.1:6379/0')"
    ]


def test_single_table_instead_of_array() -> None:
    assert "use [[deployment]]" in errors_of({"deployment": {"name": "a", "model": "gpt-4o"}})[0]


def test_bad_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[cluster\nname = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_the_originals_forms_load() -> None:
    config = load_config(
        {
            "cluster": {"name": "production", "bind": "0.0.0.0:8080"},
            "deployment": [
                {"name": "a", "model": "gpt-4o-mini", "runtime": "open_ai", "gpus": 0},
                {
                    "name": "b",
                    "model": "x",
                    "runtime_config": {"runtime": "lite_llm", "base_url": "http://l"},
                },
                {"name": "c", "model": "y", "runtime": {"custom": "mock"}},
            ],
        }
    )
    a, b, c = config.deployments
    assert (a.runtime, b.runtime, c.runtime) == ("openai", "litellm", "mock")
    assert b.runtime_config == {"base_url": "http://l"}
    assert config.cluster.host == "0.0.0.0" and config.cluster.port == 8080


def test_tagged_runtime_config_must_agree() -> None:
    assert errors_of(
        {
            "deployment": [
                {
                    "name": "a",
                    "model": "m",
                    "runtime": "openai",
                    "runtime_config": {"runtime": "gemini"},
                }
            ]
        }
    ) == ["deployment[0].runtime_config.runtime: 'gemini' disagrees with runtime = 'openai'"]


def test_structure_deployment_validates() -> None:
    dep = structure_deployment({"name": "x", "model": "gpt-4o", "retry": {"initial_backoff": 250}})
    assert dep.retry.initial_backoff == 0.25
    with pytest.raises(ConfigError, match=r"deployment\.replicas: must be >= 1 \(got 0\)"):
        structure_deployment({"name": "x", "model": "gpt-4o", "replicas": 0})


names = st.text("abcdefgh-", min_size=1, max_size=8)
ms = st.integers(0, 10**7).map(lambda v: v / 1000.0)
deployments = st.builds(
    Deployment,
    name=names,
    model=st.sampled_from(["gpt-4o", "claude-3-haiku", "gemini-2.0-flash", "tiny"]),
    runtime=st.none() | st.sampled_from(["openai", "mock", "torch"]),
    runtime_config=st.dictionaries(
        st.sampled_from(["a", "b"]), st.integers() | st.text(max_size=3), max_size=2
    ),
    gpus=st.none() | st.integers(0, 8),
    replicas=st.integers(1, 8),
    idempotent=st.booleans(),
    fallbacks=st.lists(names, max_size=2).map(tuple),
    serving=st.builds(
        Serving,
        max_concurrent=st.integers(1, 512),
        on_capacity_exhausted=st.sampled_from(CapacityPolicy),
        max_queued=st.integers(0, 10),
    ),
    rate_limits=st.builds(
        RateLimits,
        requests_per_minute=st.none() | st.integers(1, 10**6),
        tokens_per_minute=st.none() | st.integers(1, 10**6),
        concurrent_requests=st.none() | st.integers(1, 100),
        strict=st.booleans(),
    ),
    retry=st.builds(
        RetryPolicy,
        max_retries=st.integers(0, 10),
        initial_backoff=ms,
        max_backoff=ms,
        backoff_multiplier=st.floats(1, 10),
        jitter=st.sampled_from(JitterKind),
        respect_retry_after=st.booleans(),
    ),
    timeouts=st.builds(
        Timeouts,
        request_timeout=ms.filter(bool),
        read_timeout=ms.filter(bool),
        connect_timeout=ms.filter(bool),
    ),
    circuit_breaker=st.builds(
        CircuitBreakerConfig,
        failure_threshold=st.integers(1, 100),
        open_duration=ms,
        half_open_max_probes=st.integers(1, 5),
    ),
    budget=st.none()
    | st.builds(
        Budget,
        max_spend_per_hour_usd=st.none() | st.floats(0, 1e6),
        max_spend_per_day_usd=st.none() | st.floats(0, 1e6),
        on_exceeded=st.sampled_from(BudgetAction),
    ),
)


@settings(max_examples=200)
@given(deployments)
def test_unstructure_structure_round_trip(dep: Deployment) -> None:
    again = structure(unstructure(dep), Deployment)
    assert again == dep
    assert again.runtime_config == dep.runtime_config


@attrs.frozen(kw_only=True)
class Inner:
    size: int = 1


@attrs.frozen(kw_only=True)
class RuntimeConfig:
    inner: Inner = attrs.Factory(Inner)
    base_url: str = ""


def test_nested_structure_paths_have_single_dots() -> None:
    with pytest.raises(ConfigError) as info:
        structure(
            {"inner": {"size": "big"}, "base_ur": "x"},
            RuntimeConfig,
            path="deployment[0].runtime_config",
        )
    assert [p for p, _ in info.value.problems] == [
        "deployment[0].runtime_config.inner.size",
        "deployment[0].runtime_config.base_ur",
    ]
