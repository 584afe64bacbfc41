"""Multi-scale residual vector quantiser over one shared codebook (VAR, Tian et al. 2024, Sec. 3.3).

    residual = latent; accumulated = 0
    for each scale k of side s_k:
        codes_k  = nearest(area_down(residual, s_k))          # (b, s_k, s_k)
        z_k      = phi_k(bicubic_up(embed(codes_k), h))      # (b, C, h, w)
        accumulated += z_k; residual -= z_k

`accumulated` after the last scale is the quantised latent; the straight-through estimator passes the
decoder's gradient to the encoder. The loss is measured on the cumulative reconstruction after every
scale, so each scale learns to refine the previous ones. `nearest` is the plain nearest code, by cosine
or l2 distance (`TokenizerConfig.lookup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from nextscale.scales import phi_index
from nextscale.tokenizer.config import TokenizerConfig


class Phi(nn.Module):
    """VAR's light refinement conv: (1 - mix) * x + mix * conv3x3(x)."""

    def __init__(self, channels: int, mix: float) -> None:
        super().__init__()
        self.mix = mix
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(1 - self.mix) + self.conv(x).mul(self.mix)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample or bicubic-upsample a (b, C, h, w) map to (b, C, size, size)."""
    if x.shape[-1] == size:
        return x
    if size < x.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bicubic")


def nearest_codes(vectors: torch.Tensor, weight: torch.Tensor, rule: str) -> torch.Tensor:
    """Nearest codes of vectors (n, C) in the codebook weight (V, C) -> (n,), by cosine or l2 distance."""
    if rule == "cosine":
        return (F.normalize(vectors, dim=-1) @ F.normalize(weight, dim=-1).t()).argmax(dim=-1)
    distance = vectors.pow(2).sum(-1, keepdim=True) - 2 * vectors @ weight.t() + weight.pow(2).sum(-1)
    return distance.argmin(dim=-1)


@dataclass
class QuantizerOutput:
    """Result of `MultiScaleQuantizer.forward`."""

    quantized: torch.Tensor
    """(b, C, h, w): straight-through quantised latent (value = accumulated after the last scale)."""
    codes: list[torch.Tensor]
    """Per-scale code maps [(b, s_k, s_k), ...]."""
    loss: torch.Tensor
    """Scalar quantisation loss (codebook + beta * commitment), averaged over scales."""
    accumulated: list[torch.Tensor]
    """(b, C, h, w) cumulative reconstruction after each scale (with gradient to codebook and phi)."""


class MultiScaleQuantizer(nn.Module):
    """Residual quantiser with VAR-compatible scales and codebook-health bookkeeping."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.scale_sizes = config.scale_sizes
        self.latent_size = config.latent_size
        self.embedding = nn.Embedding(config.vocab_size, config.latent_dim)
        nn.init.uniform_(self.embedding.weight, -1 / config.vocab_size, 1 / config.vocab_size)
        self.phis = nn.ModuleList(Phi(config.latent_dim, config.phi_mix) for _ in range(config.num_phi))
        # EMA of how often each code is picked per step: drives dead-code restarts (buffer, not learned).
        self.register_buffer("usage_ema", torch.ones(config.vocab_size), persistent=False)

    def phi(self, scale: int, x: torch.Tensor) -> torch.Tensor:
        if not self.phis:
            return x
        return self.phis[phi_index(scale, len(self.scale_sizes), len(self.phis))](x)

    def lookup(self, vectors: torch.Tensor) -> torch.Tensor:
        """Codes of vectors (n, C) -> (n,): the nearest code by the config's `lookup` rule."""
        return nearest_codes(vectors.float(), self.embedding.weight.float(), self.config.lookup)

    def embed_scale(self, scale: int, codes: torch.Tensor) -> torch.Tensor:
        """Codes of one scale (b, s, s) -> its contribution z_k (b, C, h, w) to the accumulated latent."""
        z = rearrange(F.embedding(codes, self.embedding.weight), "b s t c -> b c s t")
        return self.phi(scale, resize(z, self.latent_size))

    def forward(self, latent: torch.Tensor) -> QuantizerOutput:
        """latent (b, C, h, w) -> QuantizerOutput. Runs in fp32 whatever the autocast context."""
        with torch.autocast(device_type=latent.device.type, enabled=False):
            latent = latent.float()
            target = latent.detach()
            residual = target.clone()
            accumulated = torch.zeros_like(target)
            codes, partials = [], []
            loss = latent.new_zeros(())
            for scale, size in enumerate(self.scale_sizes):
                down = rearrange(resize(residual, size), "b c s t -> (b s t) c")
                code = self.lookup(down).view(latent.shape[0], size, size)
                z = self.embed_scale(scale, code)
                accumulated = accumulated + z
                residual = residual - z.detach()
                # codebook/phi move towards the target; the encoder commits to the codes (beta).
                loss = loss + F.mse_loss(accumulated, target) + self.config.commitment_beta * F.mse_loss(
                    accumulated.detach(), latent
                )
                codes.append(code)
                partials.append(accumulated)
            loss = loss / len(self.scale_sizes)
            quantized = latent + (accumulated - latent).detach()  # straight-through estimator
        if self.training:
            self._track_usage(codes)
        return QuantizerOutput(quantized=quantized, codes=codes, loss=loss, accumulated=partials)

    @torch.no_grad()
    def _track_usage(self, codes: Sequence[torch.Tensor]) -> None:
        counts = torch.bincount(torch.cat([c.flatten() for c in codes]), minlength=self.config.vocab_size)
        self.usage_ema.mul_(0.99).add_(counts.float(), alpha=0.01)

    @torch.no_grad()
    def restart_dead_codes(self, latent: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-seed codes used less than `dead_code_threshold` times per step with random latent vectors.

        `latent` (b, C, h, w) is a batch of encoder outputs; the vectors are drawn with `generator` (on
        the latent's device; a training checkpoints it); returns how many codes were restarted.
        With several processes, call it with the same `latent` everywhere (e.g. gathered) so weights
        stay identical.
        """
        threshold = self.config.dead_code_threshold
        if threshold <= 0:
            return 0
        dead = (self.usage_ema < threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = rearrange(latent.float(), "b c h w -> (b h w) c")
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), device=pool.device, generator=generator)
        self.embedding.weight.data[dead] = pool[pick].to(self.embedding.weight.dtype)
        self.usage_ema[dead] = threshold * 2  # grace period before the next restart
        return int(dead.numel())

    def codes_to_accumulated(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Codes of the first k scales -> accumulated latent (b, C, h, w) after scale k."""
        if not codes:
            raise ValueError("need the codes of at least one scale")
        if len(codes) > len(self.scale_sizes):
            raise ValueError(f"got {len(codes)} scales of codes but the tokenizer has {len(self.scale_sizes)}")
        accumulated = None
        for scale, code in enumerate(codes):
            self._check_codes(scale, code)
            z = self.embed_scale(scale, code)
            accumulated = z if accumulated is None else accumulated + z
        return accumulated

    def next_scale_input(self, accumulated: torch.Tensor, next_scale: int) -> torch.Tensor:
        """Teacher-forcing input of `next_scale`: accumulated latent area-pooled to its side.

        accumulated (b, C, h, w) -> (b, s*s, C) with s = scale_sizes[next_scale].
        """
        size = self.scale_sizes[next_scale]
        return rearrange(resize(accumulated, size), "b c s t -> b (s t) c")

    def teacher_inputs(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """All scales' codes -> the transformer's teacher-forcing inputs for scales 1..K-1.

        Returns (b, L - s_0 * s_0, C): for scale k+1, the accumulated latent after scale k,
        area-downsampled to s_{k+1} (VAR's `idx_to_var_input`).
        """
        inputs, accumulated = [], None
        for scale, code in enumerate(codes[:-1]):
            self._check_codes(scale, code)
            z = self.embed_scale(scale, code)
            accumulated = z if accumulated is None else accumulated + z
            inputs.append(self.next_scale_input(accumulated, scale + 1))
        if not inputs:
            return self.embedding.weight.new_zeros(codes[0].shape[0], 0, self.config.latent_dim)
        return torch.cat(inputs, dim=1)

    def _check_codes(self, scale: int, code: torch.Tensor) -> None:
        size = self.scale_sizes[scale]
        if code.dim() != 3 or code.shape[-2:] != (size, size):
            raise ValueError(f"codes of scale {scale} must have shape (b, {size}, {size}), got {tuple(code.shape)}")
