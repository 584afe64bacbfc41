"""A frozen `transformers` vision backbone, shared by the alignment teacher and the perceptual loss."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalise(nn.Module):
    """images (b, 3, H, W) in [-1, 1] -> float32 pixel values normalised with the ImageNet statistics (the
    statistics are non-persistent buffers: they move with the module and are never saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() + 1) / 2 - self.mean) / self.std


class FrozenBackbone(nn.Module):
    """`transformers.AutoModel.from_pretrained(name_or_path)`, frozen, always in inference mode.

    `pixels(images)` maps images in [-1, 1] to the backbone's input: resized to `resolution` (rounded
    down to a multiple of the patch size for ViTs) and normalised with the ImageNet statistics. It is
    differentiable, so a loss on the backbone's features can reach the images.
    """

    def __init__(self, name_or_path: str | os.PathLike, resolution: int | None, option: str) -> None:
        super().__init__()
        from transformers import AutoModel

        try:
            self.backbone = AutoModel.from_pretrained(str(name_or_path))
        except OSError as err:
            raise OSError(
                f"could not load the vision backbone '{name_or_path}' given to {option}: {err}\n"
                f"Pass a local directory (a downloaded model) or a hub id with {option}, or turn the term "
                f"off with {option} none."
            ) from err
        self.backbone.eval().requires_grad_(False)
        config = self.backbone.config
        patch_size = getattr(config, "patch_size", None)
        self.patch_size = int(patch_size) if patch_size else None
        if resolution is not None and self.patch_size:
            resolution -= resolution % self.patch_size
        self.resolution = resolution
        self.normalise = ImageNetNormalise()

    def train(self, mode: bool = True) -> FrozenBackbone:
        super().train(mode)
        self.backbone.eval()  # frozen: dropout and norms stay in inference mode
        return self

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) in [-1, 1] -> normalised pixel values (b, 3, R, R) in float32."""
        x = images.float()
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic")
        return self.normalise(x)
