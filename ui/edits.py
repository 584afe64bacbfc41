"""The Edit tab's work, without any web framework: an image, a mask (painted or uploaded) and a prompt
in; inpainting, outpainting or a keep-scales variation out (`nextscale.sampling.editing`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from nextscale.images import to_pil
from nextscale.sampling import SamplingConfig
from nextscale.sampling.editing import (
    EditResult,
    image_to_tensor,
    inpaint,
    mask_to_known,
    outpaint,
    outpaint_canvas,
    variations,
)
from nextscale.ui.models import LoadedModel

EditMode = Literal["inpaint", "outpaint", "keep scales"]
EDIT_MODES: tuple[EditMode, ...] = ("inpaint", "outpaint", "keep scales")
EDITOR_SIDE = 512
"""The longer side of the picture in the brush canvas: small images are enlarged (nearest) so the brush has
room; the mask is brought back to the model's resolution by `mask_to_known`."""
MASK_COLOUR = (255, 0, 255)


@dataclass(frozen=True)
class EditRequest:
    """One press of Edit."""

    mode: EditMode
    prompt: str
    seed: int
    sampling: SamplingConfig
    sides: tuple[int, int, int, int] = (8, 8, 8, 8)
    """outpaint: pixels added left, top, right, bottom (at the model's resolution)."""
    keep_scales: int = 2
    """keep scales: the first k scales come from the image."""

    def check(self) -> None:
        if self.mode not in EDIT_MODES:
            raise ValueError(f"the edit mode must be one of {EDIT_MODES}, got {self.mode!r}")
        if not self.prompt.strip():
            raise ValueError("write a prompt for the regenerated part")
        if self.seed < 0:
            raise ValueError(f"the seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class EditOutcome:
    """What the page shows after an edit."""

    before: Image.Image
    """The source at the model's resolution (cropped and resized as the edit saw it)."""
    after: Image.Image
    regenerated: Image.Image
    """The pixels that were regenerated, white on black, at the model's resolution."""
    notes: list[str]
    """What was done to the inputs (cropped, resized, converted)."""
    seconds: float


def editor_picture(source: Image.Image, side: int = EDITOR_SIDE) -> Image.Image:
    """The source scaled so that its longer side is `side` (nearest when enlarging: pixels stay sharp)."""
    scale = side / max(source.size)
    size = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return source.convert("RGB").resize(size, resample)


def painted_mask(layers: list[Image.Image] | None) -> Image.Image | None:
    """The brush layers -> a mask (L, white = regenerate where anything was painted), None if nothing was."""
    painted = None
    for layer in layers or []:
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return Image.fromarray(painted.astype(np.uint8) * 255, mode="L")


def mask_layer(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An uploaded mask (white = regenerate) as a brush layer of the canvas `size`, painted in MASK_COLOUR."""
    regenerate = np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST)) >= 128
    layer = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    layer[regenerate] = (*MASK_COLOUR, 255)
    return Image.fromarray(layer, mode="RGBA")


def run_edit(model: LoadedModel, request: EditRequest, source: Image.Image, mask: Image.Image | None) -> EditOutcome:
    """Edit `source` on `model`; `mask` (white = regenerate, the source's aspect) is needed to inpaint."""
    request.check()
    pipeline, size = model.pipeline, model.image_size
    image, notes = image_to_tensor(source, size)  # (1, 3, S, S) in [-1, 1]
    started = time.perf_counter()
    known: torch.Tensor | None = None
    if request.mode == "inpaint":
        if mask is None:
            raise ValueError("paint the region to regenerate on the image (or upload a mask) to inpaint")
        known = mask_to_known(mask, size)  # (1, S, S) True = kept
        result: EditResult = inpaint(pipeline, image, known, [request.prompt], request.seed, request.sampling)
    elif request.mode == "outpaint":
        _, known = outpaint_canvas(image, request.sides)
        result = outpaint(pipeline, image, request.sides, [request.prompt], request.seed, request.sampling)
    else:
        result = variations(pipeline, image, request.keep_scales, [request.prompt], request.seed, request.sampling)
    seconds = time.perf_counter() - started
    regenerated = torch.ones(size, size) if known is None else (~known[0]).float()
    return EditOutcome(
        before=to_pil(image)[0],
        after=to_pil(result.images)[0],
        regenerated=Image.fromarray((regenerated.numpy() * 255).astype(np.uint8), mode="L"),
        notes=notes,
        seconds=seconds,
    )
