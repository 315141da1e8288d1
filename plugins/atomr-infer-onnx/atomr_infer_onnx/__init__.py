"""atomr-infer runtime ``onnx``: ONNX Runtime sessions for encoders and causal LMs.

``create`` returns a :class:`~atomr_infer_core.StepModel`; the host serves it with its
continuous-batching engine. Models come from ``python -m atomr_infer export-onnx``.
"""

from __future__ import annotations

from ._config import OnnxConfig as OnnxConfig, OnnxTask as OnnxTask
from ._models import (
    OnnxCausalLM as OnnxCausalLM,
    OnnxEncoder as OnnxEncoder,
    locate_model as locate_model,
    model_task as model_task,
)
from ._plugin import create as create
from ._session import open_session as open_session

__all__ = [
    "OnnxCausalLM",
    "OnnxConfig",
    "OnnxEncoder",
    "OnnxTask",
    "create",
    "locate_model",
    "model_task",
    "open_session",
]
