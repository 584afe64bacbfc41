"""Per-scale constraints of the scale loop: known codes and where they hold.

Where a scale's mask is set, the loop replaces the sampled code by the known one before the code is
embedded (`embed_scale`), so every later scale is predicted from the known content (VAR's zero-shot
editing, Tian et al. 2024, Sec. 7: teacher-force the known tokens at every scale).

The token masks of an edit come from a pixel mask by one rule (`token_masks`): a token of side-s map is
known when at least `threshold` of the pixels of its cell are known. Its cell is the pixel rectangle that
area pooling of the H x W image to s x s averages over: rows floor(i H / s) .. ceil((i + 1) H / s) - 1,
so cells of sides that do not divide H overlap by one pixel. With the default threshold 1 a token is
known only when its WHOLE cell is known. At tiny scales this means: the 1x1 token (the image's mean
colour) is known only when nothing is regenerated; a 2x2 token only when its whole quadrant is kept;
a hole that touches every quadrant leaves the first two scales entirely free. A lower threshold keeps
coarse tokens that a small hole barely touches (threshold 0.5: the 1x1 token stays known while at
least half of the image is kept).

Editing uses one threshold per scale (`edit_thresholds`): half a cell for the coarse scales (side at
most half the latent side: they carry the layout and colours that the kept region shares with the
hole) and three quarters of a cell for the finer ones (they draw the details of the hole): the choice of
the inpainting measurement in docs/experiments/editing-bundled-demo.md (the whole-cell rule everywhere
drifts the kept region; half a cell everywhere misses the requested detail).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from nextscale.tokenizer.quantizer import MultiScaleQuantizer, resize

_TOLERANCE = 1e-6  # area pooling of a boolean mask is exact only up to float rounding


@dataclass(frozen=True)
class ScaleConstraints:
    """Known codes and boolean masks, one pair per scale (every scale present; an all-False mask is free)."""

    codes: tuple[torch.Tensor, ...]
    """Per scale (b, s, s) long: the known codes (ignored where the mask is False)."""
    masks: tuple[torch.Tensor, ...]
    """Per scale (b, s, s) bool: True where the known code replaces the sampled one."""
    latent: torch.Tensor | None = None
    """(b, C, h, w) the known image's unquantised latent, or None. When given, the known code of a scale is
    re-quantised from what the scales so far leave of it (`latent - accumulated`, the quantiser's own
    residual step), so kept tokens next to regenerated ones still add up to the known latent."""

    def __post_init__(self) -> None:
        if len(self.codes) != len(self.masks):
            raise ValueError(f"{len(self.codes)} scales of codes but {len(self.masks)} of masks")
        for scale, (code, mask) in enumerate(zip(self.codes, self.masks)):
            if code.shape != mask.shape or code.dim() != 3:
                raise ValueError(f"scale {scale}: codes {tuple(code.shape)} and mask {tuple(mask.shape)} must both "
                                 "be (b, s, s)")
            if mask.dtype != torch.bool:
                raise TypeError(f"scale {scale}: masks must be bool, got {mask.dtype}")

    @property
    def num_scales(self) -> int:
        return len(self.codes)

    def check(self, batch: int, scale_sizes: Sequence[int]) -> None:
        """Raise a ValueError unless these constraints fit a batch of `batch` images with `scale_sizes`."""
        if self.num_scales != len(scale_sizes):
            raise ValueError(f"constraints for {self.num_scales} scales, the model has {len(scale_sizes)}")
        for scale, (code, size) in enumerate(zip(self.codes, scale_sizes)):
            if tuple(code.shape) != (batch, size, size):
                raise ValueError(f"constraints of scale {scale} are {tuple(code.shape)}, expected ({batch}, {size}, "
                                 f"{size})")

    def known_codes(self, scale: int, quantizer: MultiScaleQuantizer, accumulated: torch.Tensor | None
                    ) -> torch.Tensor:
        """The known codes of `scale` (b, s, s): stored, or re-quantised from the residual of `latent`."""
        if self.latent is None:
            return self.codes[scale]
        residual = self.latent if accumulated is None else self.latent - accumulated.to(self.latent.dtype)
        size = self.codes[scale].shape[-1]
        pooled = rearrange(resize(residual.float(), size), "b c s t -> (b s t) c")
        return quantizer.lookup(pooled).view(-1, size, size)

    def apply(self, scale: int, sampled: torch.Tensor, quantizer: MultiScaleQuantizer | None = None,
              accumulated: torch.Tensor | None = None) -> torch.Tensor:
        """sampled (b, s, s) -> the same codes with the known ones where the mask of `scale` is set.

        `accumulated` (b, C, h, w) is the latent of the scales before `scale` (None at scale 0); with a
        `latent`, the known codes are re-quantised from it (the quantizer is then required).
        """
        mask = self.masks[scale].to(sampled.device)
        if not bool(mask.any()):
            return sampled
        if self.latent is not None and quantizer is None:
            raise ValueError("constraints with a latent re-quantise their codes: pass the quantizer")
        known = self.known_codes(scale, quantizer, accumulated) if quantizer is not None else self.codes[scale]
        return torch.where(mask, known.to(sampled.device), sampled)

    def known_fraction(self) -> list[float]:
        """Fraction of known tokens per scale (for messages and reports)."""
        return [float(mask.float().mean()) for mask in self.masks]


def cell_known_fraction(known: torch.Tensor, size: int) -> torch.Tensor:
    """known (b, H, W) bool pixels -> (b, size, size): the known fraction of every token's cell (area pooling)."""
    if known.dim() != 3:
        raise ValueError(f"a pixel mask must be (b, H, W), got {tuple(known.shape)}")
    return F.interpolate(known.float().unsqueeze(1), size=(size, size), mode="area").squeeze(1)


def token_masks(known: torch.Tensor, scale_sizes: Sequence[int], threshold: float | Sequence[float] = 1.0,
                keep_scales: int = 0) -> list[torch.Tensor]:
    """Pixel mask (b, H, W) bool, True = known -> per-scale token masks [(b, s, s) bool, ...].

    A token is known when at least `threshold` (in (0, 1]; one for all scales or one per scale) of its
    cell is known (see the module docstring); the first `keep_scales` scales are known entirely whatever
    the mask (variations keep the coarse layout).
    """
    thresholds = [float(threshold)] * len(scale_sizes) if isinstance(threshold, (int, float)) else list(threshold)
    if len(thresholds) != len(scale_sizes) or not all(0.0 < value <= 1.0 for value in thresholds):
        raise ValueError(f"threshold must be in (0, 1], one value or one per scale, got {threshold}")
    if not 0 <= keep_scales <= len(scale_sizes):
        raise ValueError(f"keep_scales must be in [0, {len(scale_sizes)}], got {keep_scales}")
    masks = []
    for scale, (size, value) in enumerate(zip(scale_sizes, thresholds)):
        if scale < keep_scales:
            masks.append(torch.ones(known.shape[0], size, size, dtype=torch.bool, device=known.device))
        else:
            masks.append(cell_known_fraction(known, size) >= value - _TOLERANCE)
    return masks


def edit_thresholds(scale_sizes: Sequence[int], latent_size: int, coarse: float = 0.5,
                    fine: float = 0.75) -> list[float]:
    """Per-scale thresholds of `token_masks`: `coarse` for sides <= latent_size / 2, `fine` above."""
    return [coarse if 2 * size <= latent_size else fine for size in scale_sizes]


def keep_first_scales(codes: Sequence[torch.Tensor], keep_scales: int) -> ScaleConstraints:
    """Constraints that keep the first `keep_scales` scales of `codes` and leave the rest free."""
    if not 0 <= keep_scales <= len(codes):
        raise ValueError(f"keep_scales must be in [0, {len(codes)}], got {keep_scales}")
    masks = [torch.full_like(code, scale < keep_scales, dtype=torch.bool) for scale, code in enumerate(codes)]
    return ScaleConstraints(tuple(codes), tuple(masks))
