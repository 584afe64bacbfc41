"""Zoom ("Generative Powers of Ten", Wang et al. 2023) on the one scale loop: a stack of images, one prompt
each, where every level shows the centre 1/f of the level above it.

Zoom in: level 0 is sampled from P0. Level i+1 starts from the centre 1/f of level i, cropped, upsampled
and encoded: its coarse scales, up to the scale the crop really determines (side <= s_K / f by default:
the crop holds 1/f of the pixels on each side), are kept (`edit` with `keep_scales`); the finer scales
are sampled from P(i+1). Zoom out: level i shrunk by f into the centre of a new canvas whose border is
outpainted from P(i+1) (`outpaint_canvas`).

Consistency (the paper's multi-resolution blending): the levels are ordered from the widest to the
deepest; each parent's centre takes the fine frequency bands of its child (downsampled), through a
Laplacian pyramid with per-band soft masks so that there is no seam, while the coarse bands stay the
parent's; then each child's low frequencies are corrected (a smooth additive field) so that, downsampled,
it matches the blended parent's centre. A rendered zoom then shows no jump where one level hands over
to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nextscale.images import psnr
from nextscale.sampling.blend import blur, collapse, gaussian_pyramid, laplacian_pyramid, max_levels
from nextscale.sampling.editing import EditOptions, edit, outpaint_canvas
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig, generate, resolve_seeds

ZOOM_FACTORS = (2, 4)


@dataclass(frozen=True)
class ZoomOptions:
    """How the zoom levels are made and blended."""

    factor: int = 2
    """Zoom between consecutive levels: level i+1 shows the centre 1/factor of level i (2 or 4)."""
    zoom_out: bool = False
    """Zoom out instead: level i+1 holds level i shrunk into its centre, the border outpainted."""
    keep_scales: int | None = None
    """Zoom in: scales of level i+1 kept from the parent's centre crop (None: those of side <= last / factor)."""
    blend: bool = True
    """Blend the levels (Laplacian pyramid) so that each parent's centre agrees with its child."""
    child_bands: int = 1
    """Finest Laplacian bands of a parent's centre taken from its child (the rest stay the parent's)."""
    feather: float = 1.5
    """Gaussian blur (pixels) of the centre box's edge before its mask pyramid is built."""

    def __post_init__(self) -> None:
        if self.factor not in ZOOM_FACTORS:
            raise ValueError(f"--zoom-factor must be one of {ZOOM_FACTORS}, got {self.factor}")
        if self.keep_scales is not None and self.keep_scales < 1:
            raise ValueError(f"--zoom-keep-scales must be >= 1, got {self.keep_scales}")
        if self.child_bands < 1:
            raise ValueError(f"child_bands must be >= 1, got {self.child_bands}")


@dataclass
class ZoomResult:
    """What `zoom` returns; every list runs from the widest level to the deepest."""

    levels: list[torch.Tensor]
    """Per level (b, 3, S, S) in [-1, 1], blended (equal to `raw` without blending)."""
    raw: list[torch.Tensor]
    """Per level (b, 3, S, S) as sampled, before blending."""
    prompts: list[str]
    """The prompt of each level (widest first)."""
    factor: int
    """Zoom between consecutive levels."""

    def agreement_psnr(self, blended: bool = False) -> list[torch.Tensor]:
        """Low-frequency agreement: per consecutive pair, PSNR (b,) of the child downsampled by the factor
        vs the parent's centre (before blending by default)."""
        levels = self.levels if blended else self.raw
        return [psnr(shrink(child, self.factor), centre(parent, self.factor))
                for parent, child in zip(levels, levels[1:])]


def default_keep_scales(scale_sizes: Sequence[int], factor: int) -> int:
    """Scales whose side is at most the last side / factor: what a 1/factor crop really determines."""
    return max(sum(1 for size in scale_sizes if size * factor <= scale_sizes[-1]), 1)


def centre_box(size: int, factor: int) -> tuple[int, int]:
    """(start, side) of the centre 1/factor of a size-pixel side."""
    side = size // factor
    return (size - side) // 2, side


def centre(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The centre 1/factor of (b, c, S, S) images: (b, c, S/f, S/f)."""
    start, side = centre_box(images.shape[-1], factor)
    return images[..., start : start + side, start : start + side]


def shrink(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-downsample (b, c, S, S) by `factor`."""
    return F.interpolate(images, size=(images.shape[-1] // factor,) * 2, mode="area")


def enlarge(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling to size x size, clamped to [-1, 1]."""
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def centre_mask(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(b, 1, S, S): 1 on the centre 1/factor box, 0 elsewhere."""
    start, side = centre_box(images.shape[-1], factor)
    mask = images.new_zeros(images.shape[0], 1, *images.shape[-2:])
    mask[..., start : start + side, start : start + side] = 1
    return mask


def paste_centre(parent: torch.Tensor, child: torch.Tensor, factor: int) -> torch.Tensor:
    """The parent with its centre box replaced by the child downsampled (a naive paste)."""
    start, side = centre_box(parent.shape[-1], factor)
    pasted = parent.clone()
    pasted[..., start : start + side, start : start + side] = shrink(child, factor)
    return pasted


def blend_centre(parent: torch.Tensor, child: torch.Tensor, factor: int, child_bands: int = 1,
                 feather: float = 1.5) -> torch.Tensor:
    """The parent with the `child_bands` finest Laplacian bands of its centre taken from the child.

    The child's bands are those of the child downsampled by the factor on its own (a pasted composite
    would put the step at the box's edge into the fine bands, i.e. draw the seam); band j mixes with the
    feathered box mask's Gaussian pyramid at level j, so the hand-over is soft at every frequency.
    """
    size = parent.shape[-1]
    start, side = centre_box(size, factor)
    levels = max_levels(size)
    inset_levels = max(min(levels, max_levels(side, smallest=2)), 1)
    parent_bands = laplacian_pyramid(parent, levels)
    child_pyramid = laplacian_pyramid(shrink(child, factor), inset_levels)
    masks = gaussian_pyramid(blur(centre_mask(parent, factor), feather), levels)
    mixed = list(parent_bands)
    for band in range(min(child_bands, inset_levels - 1)):
        scale = 2**band
        inset = parent_bands[band].clone()
        begin, width = start // scale, child_pyramid[band].shape[-1]
        inset[..., begin : begin + width, begin : begin + width] = child_pyramid[band]
        mixed[band] = (1 - masks[band]) * parent_bands[band] + masks[band] * inset
    return collapse(mixed)


def blend_levels(levels: Sequence[torch.Tensor], factor: int, child_bands: int = 1,
                 feather: float = 1.5) -> list[torch.Tensor]:
    """Make a wide-to-deep stack consistent (see the module docstring): returns the blended levels."""
    blended = [level.float().clone() for level in levels]
    size = blended[0].shape[-1]
    for index in range(len(blended) - 2, -1, -1):  # bottom-up: parents take their children's fine bands
        blended[index] = blend_centre(blended[index], blended[index + 1], factor, child_bands, feather)
    for index in range(len(blended) - 1):  # top-down: children take their parents' low frequencies
        parent, child = blended[index], blended[index + 1]
        difference = centre(parent, factor) - shrink(child, factor)  # smooth: only coarse bands differ
        correction = F.interpolate(difference, size=(size, size), mode="bilinear", align_corners=False)
        blended[index + 1] = child + correction
    return [level.clamp(-1, 1) for level in blended]


def seam_gradient_ratio(images: torch.Tensor, factor: int, width: int = 1) -> torch.Tensor:
    """Mean gradient magnitude on the centre box's border (+- `width` px) over the mean elsewhere: (b,)."""
    gray = images.float().mean(dim=1, keepdim=True)  # (b, 1, S, S)
    dx = F.pad(gray[..., :, 1:] - gray[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(gray[..., 1:, :] - gray[..., :-1, :], (0, 0, 0, 1))
    magnitude = (dx.pow(2) + dy.pow(2)).sqrt().flatten(1)  # (b, S*S)
    size = images.shape[-1]
    start, side = centre_box(size, factor)
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[start : start + side, start : start + side] = True
    eroded = torch.zeros_like(inside)
    eroded[start + width : start + side - width, start + width : start + side - width] = True
    dilated = torch.zeros_like(inside)
    dilated[max(start - width, 0) : start + side + width, max(start - width, 0) : start + side + width] = True
    seam = (dilated & ~eroded).flatten().to(images.device)
    return magnitude[:, seam].mean(dim=1) / magnitude[:, ~seam].mean(dim=1).clamp_min(1e-8)


@torch.inference_mode()
def zoom(pipeline: Pipeline, prompts: Sequence[str], seeds: Sequence[int] | int = 0,
         config: SamplingConfig | None = None, options: ZoomOptions | None = None, *, batch: int = 1,
         progress: bool = False) -> ZoomResult:
    """A zoom stack of `batch` chains over the prompts P0, P1, ... (one level each; at least two).

    Chain j draws level i from the seed `seeds[j] + i * batch` (`seeds` an int: seeds[j] = seeds + j).
    """
    config, options = config or SamplingConfig(), options or ZoomOptions()
    if len(prompts) < 2:
        raise ValueError("a zoom needs at least two prompts (--prompt P0 --prompt P1 ...), one per level")
    chain_seeds = resolve_seeds(seeds, batch)
    scale_sizes = pipeline.tokenizer.config.scale_sizes
    size, factor = pipeline.tokenizer.config.image_size, options.factor
    keep = options.keep_scales or default_keep_scales(scale_sizes, factor)
    if keep > len(scale_sizes):
        raise ValueError(f"--zoom-keep-scales {keep} is more than the model's {len(scale_sizes)} scales")
    generated = [generate(pipeline, [prompts[0]] * batch, chain_seeds, config, progress=progress).images]
    for level, prompt in enumerate(prompts[1:], start=1):
        level_seeds = [seed + level * batch for seed in chain_seeds]
        previous = generated[-1]
        if options.zoom_out:
            margin = (size - size // factor) // 2
            sides = (margin, margin, size - size // factor - margin, size - size // factor - margin)
            canvas, known = outpaint_canvas(previous, sides)
            result = edit(pipeline, canvas, [prompt] * batch, known, level_seeds, config,
                          EditOptions(blend=False), progress=progress)
        else:
            crop = enlarge(centre(previous, factor), size)
            result = edit(pipeline, crop, [prompt] * batch, None, level_seeds, config, EditOptions(keep_scales=keep),
                          progress=progress)
        generated.append(result.images)
    raw = generated[::-1] if options.zoom_out else generated
    ordered_prompts = list(prompts)[::-1] if options.zoom_out else list(prompts)
    levels = (blend_levels(raw, factor, options.child_bands, options.feather) if options.blend
              else [level.clone() for level in raw])
    return ZoomResult(levels, raw, ordered_prompts, factor)
