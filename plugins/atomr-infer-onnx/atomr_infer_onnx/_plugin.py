"""Entry point of the onnx plugin: registers the ``onnx`` runtime.

Importing this module imports neither onnxruntime nor transformers; ``load`` (in the
engine's worker thread) does.
"""

from __future__ import annotations

from typing import Any

from atomr_infer_core import (
    LOCAL_DECODER_FEATURES,
    Deployment,
    PriceTable,
    RunnerContext,
    RuntimePlugin,
    TransportKind,
    hookimpl,
)

from ._config import OnnxConfig, OnnxTask
from ._models import OnnxCausalLM, OnnxEncoder, locate_model, model_task

__all__ = ["create", "register_runtimes"]


def create(
    deployment: Deployment, config: OnnxConfig, context: RunnerContext
) -> OnnxCausalLM | OnnxEncoder:
    """The step model for ``deployment``; the host wraps it in its batching engine.

    Raises ConfigError when the path holds no ONNX model.
    """
    path = config.path or deployment.model
    onnx_file, _ = locate_model(path)
    task = model_task(onnx_file, config.task)
    cls: Any = OnnxEncoder if task is OnnxTask.EMBED else OnnxCausalLM
    return cls(config, path=path, name=deployment.name)


@hookimpl
def register_runtimes(register: Any) -> None:
    register(
        RuntimePlugin(
            name="onnx",
            config_class=OnnxConfig,
            create=create,
            transport=TransportKind.LOCAL_CPU,
            model_patterns=(),
            prices=PriceTable(),
            package="atomr-infer-onnx",
            features=LOCAL_DECODER_FEATURES,
            description="ONNX Runtime sessions for sentence encoders and causal LMs",
        )
    )
