"""Choosing the device a stage runs on."""

from __future__ import annotations

import torch

from app.core.errors import MicroscopeError


def pick_device(name: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MicroscopeError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MicroscopeError(f"--device {name}: no CUDA device is available here")
    return device
