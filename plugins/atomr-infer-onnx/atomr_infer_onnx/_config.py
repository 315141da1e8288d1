"""``[deployment.runtime_config]`` of the ``onnx`` runtime."""

from __future__ import annotations

import enum

import attrs

__all__ = ["OnnxConfig", "OnnxTask"]


class OnnxTask(str, enum.Enum):
    AUTO = "auto"
    GENERATE = "generate"
    EMBED = "embed"


def _positive(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attr.name}: must be >= 1 (got {value})")


@attrs.frozen(kw_only=True)
class OnnxConfig:
    """How an ONNX model is found and run.

    Attributes:
        path: a folder written by ``python -m atomr_infer export-onnx`` (model.onnx,
            tokenizer, atomr_onnx.json), or a ``.onnx`` file whose folder holds the
            tokenizer. Empty: the deployment's ``model`` is used as the path.
        task: ``"auto"`` (from atomr_onnx.json, else the graph's outputs), ``"generate"``
            or ``"embed"``.
        providers: execution providers in order of preference; the ones actually in use
            are logged and reported (``execution_providers``).
        max_batch_size: most sequences (or texts) one run carries.
        default_max_tokens: new tokens when a request sets no ``max_tokens``.
        intra_op_threads: ONNX Runtime's intra-op threads (0: its default).
    """

    path: str = ""
    task: OnnxTask = OnnxTask.AUTO
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    max_batch_size: int = attrs.field(default=32, validator=_positive)
    default_max_tokens: int = attrs.field(default=256, validator=_positive)
    intra_op_threads: int = 0
