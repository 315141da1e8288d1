"""One sampling-default rule for every local runtime: greedy unless told otherwise."""

from __future__ import annotations

from atomr_infer_core import SamplingDefaults, SamplingParams, resolve_sampling


def test_an_unset_request_on_a_default_deployment_is_greedy() -> None:
    resolved = resolve_sampling(SamplingParams(), SamplingDefaults())
    assert (resolved.temperature, resolved.top_p, resolved.top_k) == (0.0, 1.0, 0)
    assert resolved.greedy


def test_the_deployment_default_fills_what_the_request_leaves_unset() -> None:
    defaults = SamplingDefaults(temperature=0.7, top_p=0.9, top_k=40)
    resolved = resolve_sampling(SamplingParams(top_p=0.5, seed=3), defaults)
    assert (resolved.temperature, resolved.top_p, resolved.top_k) == (0.7, 0.5, 40)
    assert resolved.seed == 3
    assert not resolved.greedy


def test_the_request_wins_over_the_deployment() -> None:
    resolved = resolve_sampling(
        SamplingParams(temperature=0.0, presence_penalty=0.5), SamplingDefaults(temperature=1.0)
    )
    assert resolved.greedy
    assert (resolved.presence_penalty, resolved.frequency_penalty) == (0.5, 0.0)
