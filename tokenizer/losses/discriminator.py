"""Adversarial loss: a PatchGAN discriminator trained against the tokenizer's decoder.

The discriminator (Isola et al. 2017, as used by VQGAN) scores overlapping patches of an image as real
or reconstructed. It is trained from scratch alongside the tokenizer with its own optimiser, so it
needs no pretrained weights; it lives in the training state, never in the exported tokenizer.
GroupNorm instead of BatchNorm keeps it per-sample: real and reconstructed images go through in one
batch, and distributed processes need no synchronised statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AdversarialConfig:
    """The adversarial term: off while `weight` is 0."""

    weight: float = 0.0
    """Weight of the generator's adversarial loss in the tokenizer's total loss (0 disables the term)."""
    start_step: int = 0
    """Optimiser step at which discriminator training and the adversarial term start (VQGAN starts late,
    once reconstructions are reasonable)."""
    adaptive: bool = True
    """Scale the term so that its gradient at the decoder's last layer has the norm of the reconstruction
    (+ perceptual) gradient there, times `weight` (VQGAN's adaptive weight); off: `weight` alone."""
    loss: Literal["hinge", "non-saturating"] = "hinge"
    """GAN objective."""
    channels: int = 64
    """Channels of the first discriminator layer (doubled per layer, at most 8x)."""
    num_layers: int = 3
    """Stride-2 layers; the receptive field of one output patch grows with it."""
    learning_rate: float | None = None
    """Discriminator AdamW learning rate; None uses the tokenizer's."""
    betas: tuple[float, float] = (0.5, 0.9)
    """Discriminator AdamW betas."""

    def __post_init__(self) -> None:
        if self.weight < 0 or self.start_step < 0:
            raise ValueError("--adversarial.weight and --adversarial.start-step must be >= 0")
        if self.num_layers < 1 or self.channels < 1:
            raise ValueError("--adversarial.num-layers and --adversarial.channels must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


class PatchDiscriminator(nn.Module):
    """images (b, 3, H, W) in [-1, 1] -> patch logits (b, 1, h, w); positive means "real"."""

    def __init__(self, config: AdversarialConfig, image_size: int, in_channels: int = 3) -> None:
        super().__init__()
        # num_layers stride-2 convs, then two stride-1 4x4 convs that each shrink the map by one
        if image_size // 2**config.num_layers < 3:
            raise ValueError(
                f"--adversarial.num-layers {config.num_layers} downsamples {image_size} px images below 3x3 "
                f"patches; use at most {max(1, (image_size // 3).bit_length() - 1)}"
            )
        width = lambda n: config.channels * min(2**n, 8)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width(0), 4, 2, 1), nn.LeakyReLU(0.2)]
        for n in range(1, config.num_layers + 1):
            stride = 2 if n < config.num_layers else 1
            layers += [nn.Conv2d(width(n - 1), width(n), 4, stride, 1, bias=False),
                       nn.GroupNorm(min(32, width(n) // 4), width(n)), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width(config.num_layers), 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits on real and on reconstructed images -> the discriminator's loss (1 at chance for hinge)."""
    real, fake = real.float(), fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits on reconstructed images -> the tokenizer's adversarial loss."""
    fake = fake.float()
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor,
                    last_layer: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """||d rec / d last_layer|| / ||d adv / d last_layer||, detached (VQGAN, Esser et al. 2021).

    Balances the adversarial term against reconstruction whatever their scales; both graphs are kept.
    """
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
