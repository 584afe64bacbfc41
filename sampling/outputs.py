"""Writing samples to disk: one PNG per image, a grid, and the coarse-to-fine progression.

The progression of an image is its reconstruction after each scale (see `progression_frame`), saved as
a strip PNG (coarse to fine, left to right) and an animated GIF that holds the final frame longer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from nextscale.images import make_grid, to_pil

SLUG_LENGTH = 40
FRAME_MILLISECONDS = 400
FINAL_FRAME_MILLISECONDS = 1500


def slugify(prompt: str, max_length: int = SLUG_LENGTH) -> str:
    """A file-name-safe slug: lowercase words joined by '-', at most `max_length` characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:max_length].rstrip("-")
    return slug or "unconditional"


def image_stem(index: int, prompt: str) -> str:
    """File stem of image `index`: zero-padded index and prompt slug, e.g. `0003-a-man-with-a-beard`."""
    return f"{index:04d}-{slugify(prompt)}"


def save_images(images: torch.Tensor, stems: Sequence[str], directory: Path) -> list[Path]:
    """images (b, 3, H, W) in [-1, 1] -> `directory/<stem>.png` each; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for picture, stem in zip(to_pil(images), stems):
        path = directory / f"{stem}.png"
        picture.save(path)
        paths.append(path)
    return paths


def save_progression(frames: Sequence[torch.Tensor], stem: str, directory: Path) -> tuple[Path, Path]:
    """One image's frames [(3, H, W), ...] coarse to fine -> `<stem>-progression.png` (strip) and `.gif`."""
    directory.mkdir(parents=True, exist_ok=True)
    stacked = torch.stack(list(frames))  # (K, 3, H, W)
    strip = directory / f"{stem}-progression.png"
    make_grid(stacked, columns=len(frames)).save(strip)
    pictures = to_pil(stacked)
    gif = directory / f"{stem}-progression.gif"
    durations = [FRAME_MILLISECONDS] * (len(pictures) - 1) + [FINAL_FRAME_MILLISECONDS]
    pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return strip, gif
