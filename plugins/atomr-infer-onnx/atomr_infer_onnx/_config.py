"""``[deployment.runtime_config]`` of the ``onnx`` runtime."""

from __future__ import annotations

import enum

import attrs

from atomr_infer_core import SamplingDefaults
from atomr_infer_core.validators import at_least, between

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
        default_temperature, default_top_p, default_top_k: sampling used when a request
            leaves that field unset: greedy by default, the rule the torch runtime follows
            too (:class:`~atomr_infer_core.SamplingDefaults`).
    """

    path: str = ""
    task: OnnxTask = OnnxTask.AUTO
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    max_batch_size: int = attrs.field(default=32, validator=_positive)
    default_max_tokens: int = attrs.field(default=256, validator=_positive)
    intra_op_threads: int = 0
    default_temperature: float = attrs.field(default=0.0, validator=between(0.0, 2.0))
    default_top_p: float = attrs.field(default=1.0, validator=between(0.0, 1.0))
    default_top_k: int = attrs.field(default=0, validator=at_least(0))

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        return SamplingDefaults(
            temperature=self.default_temperature,
            top_p=self.default_top_p,
            top_k=self.default_top_k,
        )
