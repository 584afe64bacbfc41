"""Analytic FLOP count of the next-scale transformer, scale by scale.

Counts matrix products only, 2 FLOPs per multiply-add, as `torch.utils.flop_counter.FlopCounterMode`
does (norms, softmax, activations and embedding lookups are left out: they are memory-bound and
small). The utilisation the benchmarks report is this count divided by the time and by the measured
matrix-multiply peak of the machine.

Per row (one image, or one of its two guidance rows), with width w, MLP hidden h, text width e,
t text tokens, n new tokens at a scale and c keys they attend to:

    projections      n * (8 w^2 self q/k/v/out + 4 w^2 cross q/out) per block
    self-attention   4 n c w per block (Q K^T and A V)
    cross-attention  4 n t w per block
    MLP              4 n w h per block
    modulation       12 w^2 per block + 4 w^2 head: AdaLN from the condition, once per row and pass
    head             2 n w V
    embedding        2 n latent_dim w (teacher inputs; the start token is the condition itself)
    prompt           2 e w (condition; 0 for a class label) + depth * 4 t e w (text keys/values): once
                     per prompt and pass
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from nextscale.scales import scale_offsets
from nextscale.transformer.config import TransformerConfig


@dataclass(frozen=True)
class ScaleFlops:
    """Matmul FLOPs of one pass of the transformer at one scale, for all its rows."""

    scale: int
    tokens: int
    """Tokens each row runs through the blocks at this scale (new ones with the cache, the prefix without)."""
    keys: int
    """Self-attention keys each of those tokens attends to."""
    projections: float
    self_attention: float
    cross_attention: float
    mlp: float
    modulation: float
    head: float
    embedding: float
    prompt: float

    @property
    def total(self) -> float:
        return sum(getattr(self, part) for part in FLOP_PARTS)


FLOP_PARTS = tuple(field.name for field in fields(ScaleFlops) if field.name not in ("scale", "tokens", "keys"))


def pass_flops(
    config: TransformerConfig, scale: int, tokens: int, keys: int, text_length: int, rows: int, prompt: bool
) -> ScaleFlops:
    """One pass of `rows` rows: `tokens` tokens each (the last `tokens` of scales <= `scale`) against
    `keys` self-attention keys; `prompt` adds the condition and the text keys/values."""
    width, depth, vocab = config.width, config.depth, config.vocab_size
    hidden = round(width * config.mlp_ratio)
    cross = 1 if config.cross_attention else 0
    text = text_length if cross else 0
    first = config.first_scale_tokens
    offsets = scale_offsets(config.scale_sizes)
    embedded = tokens - max(first - (offsets[scale + 1] - tokens), 0)  # tokens that are teacher inputs
    condition = 0 if config.class_conditional else 2 * config.text_width * width  # a label is a lookup
    prompt_flops = condition + depth * cross * 4 * text * config.text_width * width
    return ScaleFlops(
        scale=scale,
        tokens=tokens,
        keys=keys,
        projections=rows * depth * tokens * (8 + 4 * cross) * width * width,
        self_attention=rows * depth * 4 * tokens * keys * width,
        cross_attention=rows * depth * 4 * tokens * text * width,
        mlp=rows * depth * 4 * tokens * width * hidden,
        modulation=rows * (depth * 12 + 4) * width * width,
        head=rows * 2 * tokens * width * vocab,
        embedding=rows * 2 * embedded * config.latent_dim * width,
        prompt=rows * prompt_flops if prompt else 0.0,
    )


def sampling_flops(
    config: TransformerConfig, text_length: int, rows_per_scale: list[int] | int = 1, cached: bool = True
) -> list[ScaleFlops]:
    """FLOPs of each scale of one sampling loop (`start` + `forward_scale` per scale when `cached`; the
    teacher-forced pass over the whole prefix at every scale, prompt included, when not).

    `rows_per_scale`: rows at each scale (2 per image while guidance runs, 1 after), or one number.
    """
    rows = [rows_per_scale] * config.num_scales if isinstance(rows_per_scale, int) else list(rows_per_scale)
    if len(rows) != config.num_scales:
        raise ValueError(f"rows_per_scale has {len(rows)} entries for {config.num_scales} scales")
    offsets = scale_offsets(config.scale_sizes)
    result = []
    for scale, count in enumerate(rows):
        keys = offsets[scale + 1]
        tokens = keys - offsets[scale] if cached else keys
        result.append(pass_flops(config, scale, tokens, keys, text_length, count, prompt=scale == 0 or not cached))
    return result


def forward_flops(config: TransformerConfig, text_length: int, rows: int = 1) -> ScaleFlops:
    """The teacher-forced pass over all L tokens (training's forward; SDPA computes the full L x L
    scores under the block-causal mask, so every key counts)."""
    length = config.num_tokens
    return pass_flops(config, config.num_scales - 1, length, length, text_length, rows, prompt=True)


def training_flops(config: TransformerConfig, text_length: int, rows: int = 1) -> float:
    """Matmul FLOPs of one training step over `rows` sequences: the teacher-forced forward and a backward
    of twice its cost (the gradients of the inputs and of the weights), 3x the forward."""
    return 3 * forward_flops(config, text_length, rows).total


def guided_sampling_flops(config: TransformerConfig, text_length: int, images: int = 1) -> float:
    """Matmul FLOPs of sampling `images` images with the KV cache and classifier-free guidance on every
    scale (two rows per image: the prompt and the empty prompt, or the label and the null class)."""
    return sum(part.total for part in sampling_flops(config, text_length, 2 * images))
