"""atomr-infer runtime ``torch``: local causal LMs and sentence encoders through transformers.

``create`` returns a :class:`~atomr_infer_core.StepModel`; the host serves it with its
continuous-batching engine. :func:`export_onnx` writes a model for the ``onnx`` runtime.
"""

from __future__ import annotations

from ._causal import TorchCausalLM as TorchCausalLM, render_prompt as render_prompt
from ._config import Task as Task, TorchConfig as TorchConfig
from ._encoder import TorchEncoder as TorchEncoder, pool_embeddings as pool_embeddings
from ._export import export_onnx as export_onnx
from ._plugin import DEFAULT_DEPLOYMENTS as DEFAULT_DEPLOYMENTS, create as create
from ._weights import resolve_weights as resolve_weights

__all__ = [
    "DEFAULT_DEPLOYMENTS",
    "Task",
    "TorchCausalLM",
    "TorchConfig",
    "TorchEncoder",
    "create",
    "export_onnx",
    "pool_embeddings",
    "render_prompt",
    "resolve_weights",
]
