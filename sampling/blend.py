"""Pixel-space blending: the kept region of an edit, and Laplacian-pyramid blending of zoom levels.

- `blend_kept`: after an edit, the kept pixels are put back exactly (the tokenizer's round trip blurs
  them a little); the mask is feathered only on the regenerated side, so kept pixels stay as they were.
- `laplacian_blend` (Burt and Adelson 1983, "A multiresolution spline"): two images are split into
  frequency bands; every band is mixed with the mask blurred to that band's resolution, which hides
  the seam. `keep_coarse` bands (the lowest frequencies) come from the first image alone: zoom levels
  keep the parent's coarse structure and take the child's fine detail (Generative Powers of Ten,
  Wang et al. 2023, multi-resolution blending).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian (2 * ceil(3 sigma) + 1 taps)."""
    radius = max(int(3 * sigma + 0.999), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (b, c, H, W) with replicate padding; sigma 0 returns the input."""
    if sigma <= 0:
        return images
    kernel = gaussian_kernel(sigma).to(images)
    radius, channels = kernel.numel() // 2, images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    images = F.conv2d(padded, horizontal, groups=channels)
    padded = F.pad(images, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, vertical, groups=channels)


def blend_kept(generated: torch.Tensor, original: torch.Tensor, known: torch.Tensor,
               feather: float = 1.0) -> torch.Tensor:
    """Put the known pixels of `original` back into `generated`: (b, 3, H, W) x2, known (b, H, W) bool.

    Known pixels equal `original` exactly; the weight of the original falls off over about `feather`
    pixels into the regenerated region (0: a hard cut).
    """
    mask = known.float().unsqueeze(1)  # (b, 1, H, W)
    weight = torch.maximum(mask, blur(mask, feather)) if feather > 0 else mask
    return weight * original + (1 - weight) * generated


def gaussian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[image, half, quarter, ...] (`levels` entries): blur then 2x area downsampling."""
    pyramid = [images]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(blur(pyramid[-1], 1.0), 2))
    return pyramid


def upsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, fine to coarse; the last entry is the low-pass residual. Their collapse is exact."""
    gaussian = gaussian_pyramid(images, levels)
    bands = [fine - upsample(coarse, fine.shape[-2:]) for fine, coarse in zip(gaussian, gaussian[1:])]
    return [*bands, gaussian[-1]]


def collapse(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `laplacian_pyramid`."""
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = band + upsample(image, band.shape[-2:])
    return image


def max_levels(size: int, smallest: int = 4) -> int:
    """Pyramid levels of a side-`size` image down to at least `smallest` pixels."""
    levels = 1
    while size // 2 ** levels >= smallest:
        levels += 1
    return levels


def laplacian_blend(base: torch.Tensor, detail: torch.Tensor, mask: torch.Tensor, keep_coarse: int = 0,
                    levels: int | None = None) -> torch.Tensor:
    """Mix `detail` into `base` where `mask` is 1: (b, c, H, W) x2, mask (b, 1, H, W) in [0, 1].

    Band j mixes with the mask's Gaussian pyramid at level j (a soft mask at coarse bands, so no seam);
    the `keep_coarse` coarsest entries (the low-pass residual first) come from `base` alone.
    """
    levels = levels or max_levels(min(base.shape[-2:]))
    base_bands, detail_bands = laplacian_pyramid(base, levels), laplacian_pyramid(detail, levels)
    masks = gaussian_pyramid(mask, levels)
    mixed = []
    for index, (ours, theirs, weight) in enumerate(zip(base_bands, detail_bands, masks)):
        from_base_only = index >= levels - keep_coarse
        mixed.append(ours if from_base_only else (1 - weight) * ours + weight * theirs)
    return collapse(mixed)
