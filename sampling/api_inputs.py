"""What the Python front door (`nextscale.load_pipeline`) returns, and how it reads its inputs.

Pictures come in as PIL images (or image files) and go through the command line's own conversions:
`open_picture` for files, `image_to_tensor` (RGB, centre crop, Lanczos resize to the model's side) and
`mask_to_known` (white = regenerate, the image's size, box-resized). Seeds follow `sample.py`: the jobs
are the prompts in order, each repeated `num_images` times, and job i draws from seed + i.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from nextscale.images import to_pil
from nextscale.sampling.editing import image_to_tensor, mask_to_known, open_picture

MAX_SEED = 2**63 - 1

Prompt = str | int
PictureInput = Image.Image | str | os.PathLike


@dataclass
class Generation:
    """What a pipeline call returns when codes or the progression are asked for."""

    images: list[Image.Image]
    """One RGB picture per image, at the model's resolution."""
    prompts: list[Prompt]
    """The prompt (or class label) of each image; the mixing calls give each image's list of per-scale prompts."""
    seeds: list[int]
    """The seed of each image."""
    codes: list[torch.Tensor]
    """Per scale, coarse to fine: (n, s_k, s_k) long, the codes of the n images."""
    progression: list[list[Image.Image]] | None = None
    """With return_progression: per image, its picture after every scale (1x1 mean colour first, the
    image itself last)."""


@dataclass
class Zoom:
    """What `zoom` returns: one chain of levels, each the centre 1/factor of the one before."""

    levels: list[Image.Image]
    """One picture per level, the widest first (blended so that every parent's centre agrees with its child)."""
    frames: list[Image.Image]
    """The continuous zoom in playing order (a zoom out plays from the deepest level outwards)."""
    prompts: list[str]
    """The prompt of each level, the widest first."""
    factor: int
    """Zoom between consecutive levels."""


def whole_number(value: object, name: str, minimum: int) -> int:
    """An int (not a bool) >= minimum, else a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def finite(value: float | None, name: str) -> float | None:
    """None, or a finite number (a ValueError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def prompt_list(prompt: object, class_label: object, num_classes: int) -> list[Prompt]:
    """The prompts (text pipeline) or class labels (class-conditional pipeline, `num_classes` > 0) of a call,
    checked against the pipeline's kind: a ValueError says what to pass instead."""
    if prompt is not None and class_label is not None:
        raise ValueError("pass a prompt or class_label, not both")
    given = class_label if class_label is not None else prompt
    if given is None:
        wanted = f"a class label (0 to {num_classes - 1})" if num_classes else "a text prompt"
        raise ValueError(f"no prompt given: pass {wanted}")
    items = [given] if isinstance(given, (str, numbers.Integral)) else list(given)  # type: ignore[call-overload]
    if not items:
        raise ValueError("the list of prompts is empty: pass at least one")
    labels = [isinstance(item, numbers.Integral) and not isinstance(item, bool) for item in items]
    if num_classes:
        if not all(labels):
            raise ValueError(f"this pipeline is class-conditional: pass class labels (ints 0 to {num_classes - 1}), "
                             f"got {items[:4]!r}")
        if not all(0 <= int(item) < num_classes for item in items):
            raise ValueError(f"class labels must be in [0, {num_classes - 1}], got {[int(i) for i in items]}")
        return [int(item) for item in items]
    if not all(isinstance(item, str) for item in items):
        kind = "class labels" if any(labels) else "something else"
        raise ValueError(f"this pipeline is text-conditioned: pass text prompts, got {kind}: {items[:4]!r}")
    return items


def jobs_of(prompts: Sequence[Prompt], num_images: int) -> list[Prompt]:
    """Every prompt `num_images` times, in order (as `sample.py` orders its images)."""
    return [prompt for prompt in prompts for _ in range(num_images)]


def image_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """An int: image i gets seed + i; a list: one seed per image. Every seed in [0, 2^63 - 1]."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seeds = [int(seed) + index for index in range(count)]
    elif isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = [whole_number(item, "every seed", 0) for item in seed]
        if len(seeds) != count:
            raise ValueError(f"got {len(seeds)} seeds for {count} images: pass one per image or one base seed")
    else:
        raise ValueError(f"seed must be an int (image i gets seed + i) or a list with one per image, got {seed!r}")
    if not all(0 <= item <= MAX_SEED for item in seeds):
        raise ValueError(f"seeds must be in [0, {MAX_SEED}] (image i uses seed + i), got {seeds[0]}..{seeds[-1]}")
    return seeds


def chunks(count: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most `batch_size` items covering `count`."""
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def pictures_of(given: object, what: str) -> list[Image.Image]:
    """One picture or a list of them (PIL images or image files) -> PIL images; a ValueError names `what`."""
    items = list(given) if isinstance(given, (list, tuple)) else [given]
    if not items:
        raise ValueError(f"{what}: the list is empty")
    pictures = []
    for item in items:
        if isinstance(item, Image.Image):
            pictures.append(item)
        elif isinstance(item, (str, os.PathLike)):
            pictures.append(open_picture(item, what))
        else:
            raise ValueError(f"{what} must be a PIL image or an image file, got {type(item).__name__} (tensors in "
                             "[-1, 1] go to nextscale.sampling.editing)")
    return pictures


def source_tensors(image: object, prompts: int, num_images: int, size: int) -> tuple[torch.Tensor, list]:
    """The source picture(s) of an edit -> (1 or jobs, 3, size, size) in [-1, 1], and the pictures as given:
    one picture serves every prompt, a list gives one per prompt (each used for its `num_images`)."""
    pictures = pictures_of(image, "image")
    if len(pictures) not in (1, prompts):
        raise ValueError(f"got {len(pictures)} images for {prompts} prompts: pass one image, or one per prompt")
    tensors = torch.cat([image_to_tensor(picture, size)[0] for picture in pictures])
    return (tensors if len(pictures) == 1 else tensors.repeat_interleave(num_images, dim=0)), pictures


def known_pixels(mask: object, pictures: Sequence[Image.Image], num_images: int, size: int) -> torch.Tensor:
    """The mask(s) of an inpaint (white = regenerate, each its image's size) -> kept pixels (1 or jobs, S, S)."""
    masks = pictures_of(mask, "mask")
    if len(masks) not in (1, len(pictures)):
        raise ValueError(f"got {len(masks)} masks for {len(pictures)} images: pass one mask, or one per image")
    if len(masks) == 1 and len(pictures) == 1:
        return mask_to_known(masks[0], size, pictures[0].size)
    masks = masks * len(pictures) if len(masks) == 1 else masks
    known = torch.cat([mask_to_known(m, size, picture.size) for m, picture in zip(masks, pictures)])
    return known.repeat_interleave(num_images, dim=0)


def rows(tensor: torch.Tensor, part: slice) -> torch.Tensor:
    """The rows of `part`, or the single row that serves every job."""
    return tensor if tensor.shape[0] == 1 else tensor[part]


def generation(images: list[torch.Tensor], codes: list[list[torch.Tensor]], jobs: list, seeds: list[int],
               frames: list[list[torch.Tensor]] | None = None) -> Generation:
    """Batches of images (n, 3, H, W), their per-scale codes and (optionally) per-scale frames -> a Generation."""
    per_scale = [torch.cat(scale) for scale in zip(*codes)]
    progression = None
    if frames:
        stacked = torch.stack([torch.cat(scale) for scale in zip(*frames)], dim=1)  # (n, K, 3, H, W)
        progression = [to_pil(image_frames) for image_frames in stacked]
    return Generation(to_pil(torch.cat(images)), list(jobs), seeds, per_scale, progression)
