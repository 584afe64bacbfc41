"""Convolutional encoder and decoder (VQGAN-style ResNet blocks, Esser et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from nextscale.tokenizer.config import TokenizerConfig


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map (VQGAN's mid block)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (n c) h w -> n b 1 (h w) c", n=3)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=height, w=width))


class AsymmetricDownsample(nn.Module):
    """Halve the resolution: pad one zero row/column right and bottom, then a 3x3 stride-2 conv without
    padding (VQGAN's and VAR's `Downsample2x`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def downsample(channels: int, config: TokenizerConfig) -> nn.Module:
    """The stride-2 conv between encoder levels, padded as `config.downsample_padding` says."""
    if config.downsample_padding == "asymmetric":
        return AsymmetricDownsample(channels)
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


def mid_block(channels: int, config: TokenizerConfig) -> nn.Sequential:
    """`mid_res_blocks` ResNet blocks at the latent resolution, the mid attention after the first."""
    groups = config.norm_groups
    layers: list[nn.Module] = [ResBlock(channels, channels, groups)]
    if config.mid_attention:
        layers.append(AttentionBlock(channels, groups))
    layers.extend(ResBlock(channels, channels, groups) for _ in range(config.mid_res_blocks - 1))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """images (b, 3, H, W) in [-1, 1] -> latent (b, latent_dim, H/d, W/d)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        groups, base = config.norm_groups, config.encoder_channels
        widths = [base * m for m in config.channel_mult]
        self.stem = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        channels = widths[0]
        for level, width in enumerate(widths):
            lowest = level == len(widths) - 1
            for _ in range(config.encoder_res_blocks):
                layers.append(ResBlock(channels, width, groups))
                channels = width
                if lowest and config.level_attention:
                    layers.append(AttentionBlock(channels, groups))
            if not lowest:
                layers.append(downsample(channels, config))
        self.body = nn.Sequential(*layers)
        self.mid = mid_block(channels, config)
        self.out_norm = _norm(channels, groups)
        self.out = nn.Conv2d(channels, config.latent_dim, 3, padding=1)
        self.quant_conv = nn.Conv2d(config.latent_dim, config.latent_dim, 3, padding=1) if config.quant_convs else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.body(self.stem(images)))
        latent = self.out(F.silu(self.out_norm(h)))
        return latent if self.quant_conv is None else self.quant_conv(latent)


class Decoder(nn.Module):
    """latent (b, latent_dim, h, w) -> images (b, 3, h*d, w*d), unbounded (clamp for display)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        groups, base = config.norm_groups, config.decoder_channels
        widths = [base * m for m in reversed(config.channel_mult)]
        channels = widths[0]
        self.post_quant_conv = (
            nn.Conv2d(config.latent_dim, config.latent_dim, 3, padding=1) if config.quant_convs else None
        )
        self.stem = nn.Conv2d(config.latent_dim, channels, 3, padding=1)
        self.mid = mid_block(channels, config)
        layers: list[nn.Module] = []
        for level, width in enumerate(widths):
            for _ in range(config.decoder_res_blocks):
                layers.append(ResBlock(channels, width, groups))
                channels = width
                if level == 0 and config.level_attention:  # level 0 of the decoder is the lowest resolution
                    layers.append(AttentionBlock(channels, groups))
            if level < len(widths) - 1:
                layers.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
                layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.out_norm = _norm(channels, groups)
        self.out = nn.Conv2d(channels, config.in_channels, 3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            latent = self.post_quant_conv(latent)
        h = self.body(self.mid(self.stem(latent)))
        return self.out(F.silu(self.out_norm(h)))
