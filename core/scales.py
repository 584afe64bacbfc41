"""Scale arithmetic: everything derived from `scale_sizes`, as pure functions.

`scale_sizes` lists the side of each token map, coarse to fine, e.g. `(1, 2, 3, 4, 6, 8)` for a
64 px image with an 8x downsampling autoencoder (130 tokens), or VAR's
`(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)` for 256 px with 16x (680 tokens). Token maps are flattened
row-major and concatenated coarse to fine into one sequence of `total_tokens(scale_sizes)` tokens.

The tokenizer, the transformer and the sampler all read their token layout from here, so the three
always agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ScaleSizes = tuple[int, ...]


def validate_scale_sizes(scale_sizes: Sequence[int]) -> ScaleSizes:
    """Return `scale_sizes` as a tuple, or raise a ValueError that says what is wrong."""
    sizes = tuple(int(s) for s in scale_sizes)
    if not sizes:
        raise ValueError("scale_sizes is empty: give at least one token-map side, e.g. (1, 2, 3, 4, 6, 8)")
    if any(s < 1 for s in sizes):
        raise ValueError(f"scale_sizes must be positive, got {sizes}")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"scale_sizes must be strictly increasing (coarse to fine), got {sizes}")
    return sizes


def tokens_per_scale(scale_sizes: Sequence[int]) -> list[int]:
    """Number of tokens of each scale: `[s * s for s in scale_sizes]`."""
    return [s * s for s in scale_sizes]


def total_tokens(scale_sizes: Sequence[int]) -> int:
    """Length of the flat sequence of all scales, e.g. 130 for (1, 2, 3, 4, 6, 8)."""
    return sum(tokens_per_scale(scale_sizes))


def scale_offsets(scale_sizes: Sequence[int]) -> list[int]:
    """Start of each scale in the flat sequence, plus the total at the end (len = num_scales + 1).

    Scale k occupies `[offsets[k], offsets[k + 1])`.
    """
    offsets = [0]
    for n in tokens_per_scale(scale_sizes):
        offsets.append(offsets[-1] + n)
    return offsets


def scale_index(scale_sizes: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Scale (level) id of every token of the flat sequence: LongTensor (L,)."""
    return torch.cat(
        [torch.full((n,), k, dtype=torch.long, device=device) for k, n in enumerate(tokens_per_scale(scale_sizes))]
    )


def block_causal_mask(scale_sizes: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (L, L) mask, True where query i may attend to key j.

    A token sees every token of earlier scales and of its own scale, never a later scale
    (VAR, Tian et al. 2024, Sec. 3.2): `mask[i, j] = level[j] <= level[i]`.
    """
    level = scale_index(scale_sizes, device)
    return level[None, :] <= level[:, None]


def phi_index(scale: int, num_scales: int, num_phi: int) -> int:
    """Which of `num_phi` shared phi convs refines `scale`: the one whose tick is nearest to the scale's
    ratio k / (num_scales - 1), VAR's `PhiPartiallyShared` rule exactly (FoundationVision/VAR,
    `models/quant.py`).

    The ticks are `linspace(1/(3K), 1 - 1/(3K), K)` for K == 4 phi convs and `linspace(1/(2K), 1 - 1/(2K), K)`
    for any other K, computed in float64 as numpy does; argmin takes the first tick on a tie. Some ratios sit
    exactly halfway between two ticks (scales 2 and 7 of VAR's 10 scales with K = 4), so the precision
    decides: float32 would pick differently there. VAR's 10 scales with 4 convs give
    `[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]`.
    """
    if num_phi < 1:
        raise ValueError(f"num_phi must be >= 1 to pick a phi conv, got {num_phi}")
    if not 0 <= scale < num_scales:
        raise ValueError(f"scale must be in [0, {num_scales}), got {scale}")
    if num_scales == 1:
        return 0
    margin = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    ticks = np.linspace(margin, 1 - margin, num_phi, dtype=np.float64)
    return int(np.argmin(np.abs(ticks - scale / (num_scales - 1))))


def split_scales(flat: torch.Tensor, scale_sizes: Sequence[int], dim: int = 1) -> list[torch.Tensor]:
    """Split a flat sequence tensor along `dim` into one chunk per scale."""
    return list(torch.split(flat, tokens_per_scale(scale_sizes), dim=dim))


def flatten_codes(codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-scale code maps [(b, s, s), ...] -> flat codes (b, L), row-major within each scale."""
    return torch.cat([c.reshape(c.shape[0], -1) for c in codes], dim=1)


def unflatten_codes(flat: torch.Tensor, scale_sizes: Sequence[int]) -> list[torch.Tensor]:
    """Flat codes (b, L) -> per-scale code maps [(b, s, s), ...]."""
    if flat.shape[1] != total_tokens(scale_sizes):
        raise ValueError(
            f"flat codes have {flat.shape[1]} tokens but scale_sizes {tuple(scale_sizes)} "
            f"need {total_tokens(scale_sizes)}"
        )
    return [c.reshape(c.shape[0], s, s) for c, s in zip(split_scales(flat, scale_sizes), scale_sizes)]
