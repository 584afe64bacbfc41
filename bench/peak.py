"""The machine's matrix-multiply peak: the denominator of every utilisation the suite reports."""

from __future__ import annotations

from functools import partial

import torch

from bench.common import median_seconds, synchronize


def matmul(left: torch.Tensor, right: torch.Tensor) -> None:
    torch.mm(left, right)
    synchronize(left.device)


def gemm_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Best median FLOP/s of square (n x n) @ (n x n) products over `sizes`: {"flops": ..., "size": n}."""
    best = {"flops": 0.0, "size": 0.0}
    generator = torch.Generator().manual_seed(0)
    for size in sizes:
        left, right = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
        seconds = median_seconds({"mm": partial(matmul, left, right)}, repeats)["mm"]
        flops = 2 * size**3 / seconds
        if flops > best["flops"]:
            best = {"flops": flops, "size": float(size)}
    return best
