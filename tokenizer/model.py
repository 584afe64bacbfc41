"""`MultiScaleVQVAE`: images <-> per-scale token maps over one shared codebook."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nextscale.checkpoint import PretrainedMixin
from nextscale.tokenizer.autoencoder import Decoder, Encoder
from nextscale.tokenizer.config import TokenizerConfig
from nextscale.tokenizer.quantizer import MultiScaleQuantizer


@dataclass
class TokenizerOutput:
    """Result of `MultiScaleVQVAE.forward`."""

    reconstruction: torch.Tensor
    """(b, 3, H, W) decoded images, unclamped."""
    codes: list[torch.Tensor]
    """Per-scale code maps [(b, s_k, s_k), ...]."""
    quantization_loss: torch.Tensor
    """Scalar codebook + commitment loss."""
    accumulated: list[torch.Tensor]
    """(b, C, h, w) cumulative quantised latent after each scale (used by the alignment loss)."""
    latent: torch.Tensor
    """(b, C, h, w) unquantised encoder output."""


class MultiScaleVQVAE(nn.Module, PretrainedMixin):
    """Multi-scale residual VQ autoencoder (VAR's tokenizer, with training code).

    `encode(images) -> codes`, `decode(codes) -> images` (from any number of leading scales), and
    `teacher_inputs(codes)` for the transformer.
    """

    config_class = TokenizerConfig

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = MultiScaleQuantizer(config)
        self.decoder = Decoder(config)

    @property
    def scale_sizes(self) -> tuple[int, ...]:
        return self.config.scale_sizes

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be (b, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but this tokenizer was built for {size}x{size}; "
                "resize them first"
            )

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """images (b, 3, H, W) in [-1, 1] -> reconstruction, codes and losses (training path)."""
        self._check_images(images)
        latent = self.encoder(images)
        quant = self.quantizer(latent)
        reconstruction = self.decoder(quant.quantized)
        return TokenizerOutput(
            reconstruction=reconstruction,
            codes=quant.codes,
            quantization_loss=quant.loss,
            accumulated=quant.accumulated,
            latent=latent,
        )

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (b, 3, H, W) in [-1, 1] -> per-scale codes [(b, s_k, s_k) long, ...]."""
        self._check_images(images)
        return self.quantizer(self.encoder(images)).codes

    def decode_latent(self, accumulated: torch.Tensor) -> torch.Tensor:
        """Accumulated latent (b, C, h, w) -> images (b, 3, H, W) clamped to [-1, 1], in the latent's dtype.

        The decoder runs in its own dtype and memory format, which may differ from the quantizer's (a bf16
        channels-last decoder beside a float32 latent: `nextscale.sampling.precision.set_decoder_dtype`)."""
        weight = self.decoder.stem.weight
        latent = accumulated.to(weight.dtype)
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            latent = latent.contiguous(memory_format=torch.channels_last)
        return self.decoder(latent).clamp(-1, 1).to(accumulated.dtype).contiguous()

    @torch.no_grad()
    def decode(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Codes of the first k scales (k = 1 .. num_scales) -> images (b, 3, H, W) in [-1, 1]."""
        return self.decode_latent(self.quantizer.codes_to_accumulated(codes))

    @torch.no_grad()
    def teacher_inputs(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """All scales' codes -> teacher-forcing inputs (b, L - s_0^2, latent_dim) for the transformer."""
        if len(codes) != self.config.num_scales:
            raise ValueError(f"need codes for all {self.config.num_scales} scales, got {len(codes)}")
        return self.quantizer.teacher_inputs(codes)
