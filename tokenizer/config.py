"""Typed configuration of the multi-scale residual VQ tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from nextscale.scales import phi_index, validate_scale_sizes


@dataclass(frozen=True)
class TokenizerConfig:
    """Architecture of `MultiScaleVQVAE`.

    The default is the offline demo preset: 64 px images, an 8x8 latent (8x downsampling) and scales
    (1, 2, 3, 4, 6, 8) = 130 tokens, 1024 codes of width 32, cosine lookup, 4 shared phi convs.
    The decoder has two ResNet blocks per level against the encoder's one: reconstruction quality is
    bound by decoder capacity, while the encoder only has to produce a quantisable latent (the measurement:
    docs/experiments/tokenizer-demo-preset.md).
    """

    image_size: int = 64
    """Side of the square training images, in pixels."""
    in_channels: int = 3
    """Image channels (RGB)."""
    latent_dim: int = 32
    """Channels of the latent map and of every codebook vector."""
    vocab_size: int = 1024
    """Size of the ONE codebook shared by all scales."""
    scale_sizes: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    """Side of each token map, coarse to fine; the last equals the latent side."""
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    """Channel multiplier per resolution level; downsampling = 2 ** (len - 1)."""
    encoder_channels: int = 32
    """Base channels of the encoder (times `channel_mult`)."""
    decoder_channels: int = 32
    """Base channels of the decoder (times `channel_mult`)."""
    encoder_res_blocks: int = 1
    """ResNet blocks per encoder level."""
    decoder_res_blocks: int = 2
    """ResNet blocks per decoder level."""
    mid_attention: bool = False
    """Self-attention block at the latent resolution (VQGAN's mid block)."""
    mid_res_blocks: int = 1
    """ResNet blocks of the mid block; the mid attention follows the first (VAR: 2, attention between)."""
    level_attention: bool = False
    """Self-attention after every ResNet block of the lowest-resolution level, encoder and decoder (VAR)."""
    quant_convs: bool = False
    """A 3x3 conv on the latent after the encoder and before the decoder (VAR's quant_conv, post_quant_conv)."""
    downsample_padding: Literal["symmetric", "asymmetric"] = "symmetric"
    """Stride-2 encoder convs: padding 1 on every side, or one zero row/column right and bottom (VAR, VQGAN)."""
    lookup: Literal["cosine", "l2"] = "cosine"
    """Nearest-code rule: cosine (l2-normalised, keeps usage high) or plain Euclidean."""
    num_phi: int = 4
    """Number of phi refinement convs shared across scales by scale ratio (VAR)."""
    phi_mix: float = 0.5
    """Phi output = (1 - mix) * input + mix * conv(input) (VAR's quant_resi)."""
    commitment_beta: float = 0.25
    """Weight of the commitment term of the quantisation loss."""
    dead_code_threshold: float = 0.0
    """Restart codes whose EMA usage falls below this many hits per step (0 disables)."""
    norm_groups: int = 16
    """GroupNorm groups in the ResNet blocks."""

    REMOVED_OPTIONS: ClassVar[dict[str, Any]] = {
        "null_code": False, "residual_sparsity": 0.0, "residual_sparsity_scales": 2,
        "code_rate": 0.0, "code_rate_flat_boost": 0.0, "code_rate_contrast": 0.02,
    }
    """Options the tokenizer no longer has (the null code, the residual sparsity term, the rate-aware
    lookup; `docs/experiments/`), each with the value that left it off: a saved config holding that value
    loads without it, any other value is refused (`nextscale.checkpoint.config_from_dict`)."""
    REMOVED_AT: ClassVar[str] = "cf98767"
    """The last commit whose tokenizer has the `REMOVED_OPTIONS`: models that use them load there."""

    def __post_init__(self) -> None:
        sizes = validate_scale_sizes(self.scale_sizes)
        object.__setattr__(self, "scale_sizes", sizes)
        if self.image_size % self.downsample:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the downsampling factor {self.downsample} "
                f"(2 ** (len(channel_mult) - 1), channel_mult {self.channel_mult}): {size_fix(self.image_size)}"
            )
        if sizes[-1] != self.latent_size:
            raise ValueError(
                f"the last scale size must equal the latent side {self.latent_size} (image_size {self.image_size} / "
                f"downsampling {self.downsample} from channel_mult {self.channel_mult}); got scale_sizes {sizes}: "
                f"{size_fix(self.image_size, self.latent_size)}"
            )
        for name in ("encoder_channels", "decoder_channels"):
            if getattr(self, name) % self.norm_groups:
                raise ValueError(f"{name}={getattr(self, name)} must be divisible by norm_groups={self.norm_groups}")
        if self.mid_res_blocks < 1:
            raise ValueError(f"mid_res_blocks must be >= 1, got {self.mid_res_blocks}")
        if self.downsample_padding not in ("symmetric", "asymmetric"):
            raise ValueError(f"downsample_padding must be 'symmetric' or 'asymmetric', got {self.downsample_padding!r}")
        if not 0.0 <= self.phi_mix <= 1.0:
            raise ValueError(f"phi_mix must be in [0, 1], got {self.phi_mix}")
        if self.num_phi < 0:
            raise ValueError(f"num_phi must be >= 0, got {self.num_phi}")
        used = {phi_index(k, len(sizes), self.num_phi) for k in range(len(sizes))} if self.num_phi else set()
        if len(used) < self.num_phi:
            # an unused phi conv is a parameter without gradient: distributed training (DDP) rejects it
            raise ValueError(
                f"num_phi={self.num_phi} leaves {self.num_phi - len(used)} phi conv(s) unused with "
                f"{len(sizes)} scales; use num_phi <= {len(used)}"
            )

    @classmethod
    def for_image_size(cls, image_size: int, **overrides: Any) -> TokenizerConfig:
        """The size preset of `image_size` (channel_mult and scale_sizes, `size_preset`), with overrides."""
        return cls(**{"image_size": image_size, **size_preset(image_size).fields(), **overrides})

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_scales(self) -> int:
        return len(self.scale_sizes)


@dataclass(frozen=True)
class SizePreset:
    """The downsampling and scale schedule of one image size."""

    channel_mult: tuple[int, ...]
    """Channel multiplier per level; downsampling = 2 ** (len - 1)."""
    scale_sizes: tuple[int, ...]
    """Token-map sides, coarse to fine, ending at the latent side."""

    def fields(self) -> dict[str, tuple[int, ...]]:
        return {"channel_mult": self.channel_mult, "scale_sizes": self.scale_sizes}


# 32 and 64 px keep the demo's 130-token schedule (latent 8); 128 px adds two scales (latent 16, 530 tokens);
# 256 px is VAR's 16x tokenizer with its 10-scale schedule (680 tokens); 512 px is VAR-d36's (2240 tokens).
SIZE_PRESETS: dict[int, SizePreset] = {
    32: SizePreset((1, 2, 4), (1, 2, 3, 4, 6, 8)),
    64: SizePreset((1, 2, 2, 4), (1, 2, 3, 4, 6, 8)),
    128: SizePreset((1, 2, 2, 4), (1, 2, 3, 4, 6, 8, 12, 16)),
    256: SizePreset((1, 1, 2, 2, 4), (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)),
    512: SizePreset((1, 1, 2, 2, 4), (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)),
}


def suggested_scale_sizes(latent_size: int) -> tuple[int, ...]:
    """A VAR-like schedule ending at `latent_size`: VAR's 256 px sides (1 ... 16) rescaled, deduplicated."""
    var = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    return tuple(sorted({max(1, round(side * latent_size / 16)) for side in var} | {latent_size}))


def size_preset(image_size: int) -> SizePreset:
    """SIZE_PRESETS[image_size], else derived: the largest downsampling (2 to 16) that leaves a latent side of
    at least 8, with a VAR-like schedule up to it; ValueError naming the preset sizes when none fits."""
    if image_size in SIZE_PRESETS:
        return SIZE_PRESETS[image_size]
    for downsample, channel_mult in ((16, (1, 1, 2, 2, 4)), (8, (1, 2, 2, 4)), (4, (1, 2, 4)), (2, (1, 2))):
        if image_size % downsample == 0 and image_size // downsample >= 8:
            return SizePreset(channel_mult, suggested_scale_sizes(image_size // downsample))
    raise ValueError(f"no size preset fits {image_size} px (the latent side must be at least 8 after a 2x to 16x "
                     f"downsampling): resize the images to a preset size ({', '.join(map(str, SIZE_PRESETS))} px)")


def size_fix(image_size: int, latent_size: int | None = None) -> str:
    """What to pass so that a tokenizer fits `image_size`: its size preset when there is one, else the options."""
    try:
        preset = size_preset(image_size)
    except ValueError:
        return (f"pick --model.channel-mult with one entry per level so that 2 ** (levels - 1) divides {image_size} "
                f"(dropping a level halves the downsampling), or use a preset size "
                f"({', '.join(map(str, SIZE_PRESETS))} px)")
    return (f"use the size preset (--image-size {image_size} alone) or pass --model.channel-mult "
            f"{' '.join(map(str, preset.channel_mult))} --model.scale-sizes {' '.join(map(str, preset.scale_sizes))}"
            + (f" (dropping a --model.channel-mult level halves the downsampling; scale_sizes end at the latent side"
               f" {latent_size})" if latent_size else ""))
