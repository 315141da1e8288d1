"""Opening an ONNX Runtime session and telling the truth about its providers.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even where CUDA cannot load,
then silently runs on CPU. Only ``session.get_providers()`` says what is in use, so that
is what is reported, and a requested GPU provider that is not in use is logged as a
fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["is_out_of_memory", "open_session", "shrink_options"]

log = logging.getLogger("atomr_infer.onnx")

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


def open_session(
    path: Path, providers: Sequence[str], *, name: str, intra_op_threads: int = 0
) -> tuple[Any, tuple[str, ...], str | None]:
    """``(session, providers in use, fallback note or None)`` for the model at ``path``."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # a missing CUDA library is reported below, once
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
    in_use = tuple(session.get_providers())
    missing_gpu = [p for p in providers if p in _GPU_PROVIDERS and p not in in_use]
    note = None
    if missing_gpu:
        note = (
            f"onnx deployment {name!r}: requested {', '.join(missing_gpu)} but ONNX Runtime "
            f"runs on {', '.join(in_use)}"
            + (
                " (the GPU build could not load CUDA: check the CUDA/cuDNN libraries)"
                if any(p in available for p in missing_gpu)
                else " (this onnxruntime build has no GPU support: install atomr-infer-onnx[gpu])"
            )
        )
        log.warning("%s", note)
    log.info("onnx deployment %r: execution providers in use: %s", name, ", ".join(in_use))
    return session, in_use, note


#: what ONNX Runtime's allocators say when memory runs out (the BFC arena, CUDA, cuBLAS,
#: cuDNN); it raises RuntimeException or Fail with one of these in the message
_OUT_OF_MEMORY = (
    "failed to allocate memory",
    "out of memory",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by ``session.run``) is ONNX Runtime running out of memory."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

    if not isinstance(exc, Fail | RuntimeException):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in _OUT_OF_MEMORY)


def shrink_options(providers: Sequence[str]) -> Any:
    """Run options that give the arenas' free memory back to the device at the end of
    the run (``memory.enable_memory_arena_shrinkage``): the first run after an
    out-of-memory error uses them, as ``torch.cuda.empty_cache()`` in the torch runtime."""
    import onnxruntime as ort

    options = ort.RunOptions()
    devices = "gpu:0" if "CUDAExecutionProvider" in providers else "cpu:0"
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", devices)
    return options
