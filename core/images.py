"""Conversions between image tensors in [-1, 1] and PIL images / PNG grids."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(b, 3, H, W) floats in [-1, 1] -> (b, 3, H, W) uint8: exactly what a saved PNG holds."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """(b, 3, H, W) uint8 -> (b, 3, H, W) float32 in [-1, 1] (the inverse of `to_uint8` up to rounding)."""
    return images.float() / 127.5 - 1


def to_arrays(images: torch.Tensor) -> np.ndarray:
    """(b, 3, H, W) floats in [-1, 1] -> uint8 array (b, H, W, 3), the layout of PIL and PNG files."""
    return rearrange(to_uint8(images), "b c h w -> b h w c").cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(b, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    return [Image.fromarray(array) for array in to_arrays(images)]


def grid_columns(count: int, group: int = 1) -> int:
    """Columns of a close-to-square grid of `count` images that come in groups of `group` (images per
    prompt): whole groups per row when groups are short, each group in whole rows when it is long, the
    square root when neither fits within a factor of two of square."""
    square = math.ceil(math.sqrt(max(count, 1)))
    if group <= 1:
        return square
    if group <= square:
        return group * max(1, round(square / group))
    divisor = next(d for d in range(square, group + 1) if group % d == 0)
    return divisor if divisor <= 2 * square else square


def make_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tile (b, 3, H, W) images in [-1, 1] row-major into one RGB image with white padding (`columns`
    defaults to a close-to-square grid)."""
    arrays = to_arrays(images)
    count, height, width, _ = arrays.shape
    columns = columns or grid_columns(count)
    rows = math.ceil(count / columns)
    canvas = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, 3), 255, dtype=np.uint8
    )
    for i, array in enumerate(arrays):
        top = padding + (i // columns) * (height + padding)
        left = padding + (i % columns) * (width + padding)
        canvas[top : top + height, left : left + width] = array
    return Image.fromarray(canvas)


def save_grid(
    images: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike, columns: int | None = None
) -> Path:
    """Save a grid PNG; a sequence of equal-length batches becomes one row per batch."""
    if not isinstance(images, torch.Tensor):
        columns = columns or images[0].shape[0]
        images = torch.cat(list(images), dim=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, columns).save(path)
    return path


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2): (b, 3, H, W) x2 -> (b,)."""
    mse = (prediction.float().clamp(-1, 1) - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
