from __future__ import annotations

import pickle

import pytest

from atomr_infer_core import errors
from atomr_infer_core.errors import InferenceError, error_from_json

ALL_ERRORS = [
    errors.RateLimitedError("slow down", provider="openai", retry_after_s=2.5),
    errors.QuotaExceededError("no quota", provider="openai"),
    errors.BudgetExceededError("over budget", retry_after_s=60.0),
    errors.CircuitOpenError(
        "open", provider="openai", opened_at=1.0, retry_at=31.0, retry_after_s=30.0
    ),
    errors.CapacityExhaustedError("full"),
    errors.DrainingError("draining"),
    errors.ContentFilteredError("filtered", reason="violence"),
    errors.ContextLengthExceededError("too long", tokens=9000, max_tokens=8192),
    errors.BadRequestError("bad", param="messages"),
    errors.PayloadTooLargeError("big", limit_bytes=10),
    errors.UnauthorizedError("who"),
    errors.ForbiddenError("no"),
    errors.ModelNotAllowedError("not yours", model="chat"),
    errors.NotFoundError("none", model="x"),
    errors.NetworkError("down"),
    errors.ServerError("boom", status=503, body="oops"),
    errors.MalformedStreamError("garbage"),
    errors.RequestTimeoutError("slow", elapsed_s=30.0, phase="first_byte"),
    errors.SessionPoisonedError("cuda"),
    errors.InternalError("bug"),
]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_round_trips_through_json_and_pickle(error: InferenceError) -> None:
    error.deployment = "chat"
    for clone in (error_from_json(error.to_json()), pickle.loads(pickle.dumps(error))):
        assert type(clone) is type(error)
        assert clone.to_json() == error.to_json()
        assert clone.deployment == "chat"


def test_kinds_are_unique_and_stable() -> None:
    kinds = [type(e).kind for e in ALL_ERRORS]
    assert len(set(kinds)) == len(kinds)
    assert errors.RateLimitedError.kind == "rate_limited"
    assert errors.RequestTimeoutError.kind == "timeout"


def test_retryable_and_circuit_flags_follow_the_original() -> None:
    retryable = {type(e).__name__ for e in ALL_ERRORS if e.retryable}
    counted = {type(e).__name__ for e in ALL_ERRORS if e.counts_as_circuit_failure}
    assert retryable == {
        "RateLimitedError",
        "NetworkError",
        "ServerError",
        "MalformedStreamError",
        "RequestTimeoutError",
    }
    assert counted == {"NetworkError", "ServerError", "MalformedStreamError", "RequestTimeoutError"}


def test_http_status_table_matches_design() -> None:
    status = {type(e).__name__: e.http_status for e in ALL_ERRORS}
    assert status["BadRequestError"] == 400
    assert status["ContextLengthExceededError"] == 400
    assert status["ContentFilteredError"] == 400
    assert status["UnauthorizedError"] == 401
    assert status["NotFoundError"] == 404
    assert status["PayloadTooLargeError"] == 413
    assert status["RateLimitedError"] == status["BudgetExceededError"] == 429
    assert status["ServerError"] == status["NetworkError"] == 502
    assert (
        status["CircuitOpenError"]
        == status["CapacityExhaustedError"]
        == status["DrainingError"]
        == 503
    )
    assert status["RequestTimeoutError"] == 504
    assert errors.BudgetExceededError.code == "insufficient_quota"


def test_retry_after_is_exposed_where_known() -> None:
    assert errors.RateLimitedError("x", retry_after_s=1.5).retry_after == 1.5
    assert errors.RateLimitedError("x").retry_after is None
    assert errors.ServerError("x", status=500).retry_after is None


def test_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown fields"):
        errors.ServerError("x", nope=1)


def test_unknown_kind_rebuilds_as_internal() -> None:
    clone = error_from_json({"kind": "martian", "message": "?"})
    assert type(clone) is errors.InternalError
    assert clone.message == "?"


def test_config_error_lists_every_problem_with_its_path() -> None:
    err = errors.ConfigError([("a.b", "bad"), ("c", "worse")])
    assert str(err) == "2 configuration problems:\n  a.b: bad\n  c: worse"
    assert str(errors.ConfigError([("a", "bad")])) == "a: bad"


def test_runtime_not_installed_names_the_pip_line() -> None:
    err = errors.RuntimeNotInstalledError("deployment[0].runtime", "openai", "atomr-infer-openai")
    assert (
        str(err)
        == "deployment[0].runtime: runtime 'openai' is not installed: run `pip install atomr-infer-openai`"
    )
