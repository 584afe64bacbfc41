"""`--device` is resolved in one place for every entry point (sampling, the UI, the FD command)."""

from __future__ import annotations

import pytest
import torch

from nextscale.devices import resolve_device


def test_auto_and_explicit_devices():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_cuda_without_a_gpu_says_what_to_do():
    with pytest.raises(ValueError, match="no CUDA device is available; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda:1")


def test_unknown_device_is_one_clear_error():
    with pytest.raises(ValueError, match="--device gpu0 is not a device"):
        resolve_device("gpu0")
