"""Where a command runs: `--device auto|cpu|cuda|...` resolved once for every entry point."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA when available, else the CPU; `cuda` without a CUDA device is a ValueError saying what to do."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but no CUDA device is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device} is not a device torch knows ({error}); use auto, cpu or cuda") from None
