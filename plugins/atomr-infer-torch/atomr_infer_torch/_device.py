"""Device and dtype choice (torch imported lazily: listing plugins stays fast)."""

from __future__ import annotations

from typing import Any

from atomr_infer_core import ConfigError, TransportKind

__all__ = ["expected_transport", "pick_device", "pick_dtype", "transport_for"]


def pick_device(device: str) -> str:
    """``"auto"`` → ``"cuda:0"`` when a GPU is usable, else ``"cpu"``; ``"cuda"`` → ``"cuda:0"``.

    Imports torch (call it from ``load``, in a worker thread). Raises ConfigError when a
    GPU is asked for and torch cannot use one.
    """
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    device = "cuda:0" if device == "cuda" else device
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(
                [
                    (
                        "runtime_config.device",
                        f"{device!r} requested but torch {torch.__version__} sees "
                        f"{torch.cuda.device_count()} usable GPU(s); use device = 'cpu' or 'auto'",
                    )
                ]
            )
    return device


def expected_transport(device: str) -> TransportKind:
    """The transport a configured device implies before anything is loaded."""
    return TransportKind.LOCAL_GPU if device.startswith("cuda") else TransportKind.LOCAL_CPU


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def transport_for(device: str) -> TransportKind:
    return TransportKind.LOCAL_GPU if device.startswith("cuda") else TransportKind.LOCAL_CPU
