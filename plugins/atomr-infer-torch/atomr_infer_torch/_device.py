"""Device and dtype choice (torch imported lazily: listing plugins stays fast)."""

from __future__ import annotations

from typing import Any

from atomr_infer_core import TransportKind

__all__ = ["pick_device", "pick_dtype", "transport_for"]


def pick_device(device: str) -> str:
    """``"auto"`` → ``"cuda:0"`` when a GPU is usable, else ``"cpu"``; ``"cuda"`` → ``"cuda:0"``."""
    if device == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if device == "cuda" else device


def pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def transport_for(device: str) -> TransportKind:
    return TransportKind.LOCAL_GPU if device.startswith("cuda") else TransportKind.LOCAL_CPU
