"""Perceptual loss: distance between the features a frozen vision backbone sees in two images.

The recipe is LPIPS's (Zhang et al. 2018) without its learned per-channel weights: take the hidden
states of several layers of a frozen network, normalise every feature vector to unit length over
channels, and average the squared difference over channels, positions and layers. The network is any
`transformers` vision backbone that returns hidden states: convolutional ones (`microsoft/resnet-50`,
`facebook/convnext-tiny-224`: maps (b, C, h, w)) or ViTs (`facebook/dinov2-small`: tokens (b, N, D)).
It is never part of our checkpoints. No network is bundled; the term is off until one is named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nextscale.tokenizer.losses.backbone import FrozenBackbone


@dataclass(frozen=True)
class PerceptualConfig:
    """Which frozen network measures perceptual distance and how strongly."""

    model: str = "none"
    """Local directory or hub id of a `transformers` vision backbone (e.g. microsoft/resnet-50);
    "none" disables the perceptual loss."""
    weight: float = 1.0
    """Weight of the perceptual loss in the tokenizer's total loss (VQGAN and LlamaGen weigh LPIPS 1.0)."""
    layers: tuple[int, ...] | None = None
    """Indices into the backbone's hidden states (0 is the stem/embedding output); None uses all."""
    resolution: int | None = 224
    """Images are resized to this side before the network; None feeds them at their own size."""
    start_step: int = 0
    """Optimiser step at which the term switches on."""

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"--perceptual.weight must be >= 0, got {self.weight}")

    @property
    def enabled(self) -> bool:
        return self.model.lower() != "none" and self.weight > 0


def normalised_distance(a: torch.Tensor, b: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Mean squared distance of channel-normalised features, per sample: (b, ...) x 2 -> (b,). In [0, 4]."""
    a = a.float() / (a.float().norm(dim=channel_dim, keepdim=True) + 1e-10)
    b = b.float() / (b.float().norm(dim=channel_dim, keepdim=True) + 1e-10)
    squared = (a - b).pow(2).sum(dim=channel_dim)  # (b, positions...)
    return squared.flatten(1).mean(dim=1)


class PerceptualLoss(FrozenBackbone):
    """`loss(reconstruction, target) -> scalar`: normalised feature distance averaged over layers.

    Gradients reach `reconstruction`; the network's own weights stay frozen.
    """

    def __init__(self, config: PerceptualConfig) -> None:
        super().__init__(config.model, config.resolution, option="--perceptual.model")
        self.layers = config.layers

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (b, 3, H, W) in [-1, 1] -> the selected hidden states."""
        hidden = self.backbone(pixel_values=self.pixels(images), output_hidden_states=True).hidden_states
        if hidden is None:
            name = type(self.backbone).__name__
            raise ValueError(f"{name} returns no hidden states: pick another --perceptual.model")
        return select_layers(hidden, self.layers)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) x 2 in [-1, 1] -> scalar distance (0 for identical images)."""
        with torch.no_grad():
            target_features = self.features(target)
        distances = []
        for x, y in zip(self.features(reconstruction), target_features):
            channel_dim = 1 if x.dim() == 4 else -1  # conv maps (b, C, h, w); ViT tokens (b, N, D)
            distances.append(normalised_distance(x, y, channel_dim).mean())
        return torch.stack(distances).mean()


def select_layers(hidden: Sequence[torch.Tensor], layers: Sequence[int] | None) -> list[torch.Tensor]:
    if layers is None:
        return list(hidden)
    bad = [i for i in layers if not -len(hidden) <= i < len(hidden)]
    if bad:
        raise ValueError(f"--perceptual.layers {bad} out of range: the backbone has {len(hidden)} hidden states")
    return [hidden[i] for i in layers]
