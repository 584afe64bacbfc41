"""Equal-backbone cost models: the same transformer sampled three ways, each with guidance (2 rows per image).

These are COST comparisons, not generators: the weights are random and the baselines' outputs are not
images. They answer "how long does this backbone take to produce the final token grid" when it is
used as
- next-scale prediction (ours): K passes over 1x1 ... s x s with the KV cache (`generate`'s transformer
  loop plus its sampling step, with random next-scale inputs: no tokenizer);
- raster-order autoregression: s*s steps of one token each, KV-cached, each step with the vocabulary
  head and the same guidance + filter + draw (as LlamaGen-style AR over the same final grid);
- diffusion-style sampling: N passes over the whole s x s grid with full (bidirectional) attention and
  a latent-width output head instead of the vocabulary head (as a DiT on the same tokens); every pass
  costs the same, so one pass is timed and multiplied by N = 25 and 50.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import nn

from bench.common import TEXT_LENGTH, median_seconds, random_text, synchronize
from nextscale.sampling.filtering import sample_codes
from nextscale.sampling.guidance import guidance_strengths, guided_logits, unconditional_rows_needed
from nextscale.sampling.sampler import CachedLogits, RecomputedLogits, SamplingConfig
from nextscale.scales import scale_offsets
from nextscale.transformer import NextScaleTransformer
from nextscale.transformer.flops import pass_flops, sampling_flops

DIFFUSION_STEPS = (25, 50)


@torch.inference_mode()
def next_scale_loop(
    transformer: NextScaleTransformer,
    text: dict[str, torch.Tensor],
    batch: int,
    config: SamplingConfig,
    cached: bool = True,
) -> None:
    """The transformer and sampling step of the sampler's scale loop through its own logits sources (the
    KV cache, or the reference that recomputes the prefix), with random next-scale inputs."""
    model = transformer.config
    strengths = guidance_strengths(
        model.num_scales, config.cfg_scale, config.guidance_schedule, config.guidance_off_last
    )
    guided_rows = unconditional_rows_needed(strengths)
    generators = [torch.Generator(device=text["text_pooled"].device).manual_seed(i) for i in range(batch)]
    offsets = scale_offsets(model.scale_sizes)
    source = (CachedLogits if cached else RecomputedLogits)(transformer, text)
    for scale in range(model.num_scales):
        rows = 2 * batch if guided_rows[scale] else batch
        tokens = offsets[scale + 1] - offsets[scale]
        inputs = None if scale == 0 else text["text_pooled"].new_zeros(rows, tokens, model.latent_dim)
        logits = source(scale, inputs, rows)
        if rows > batch:
            logits = guided_logits(logits[:batch], logits[batch:], strengths[scale])
        sample_codes(logits, generators, config.top_k, config.top_p, config.temperature)
    synchronize(text["text_pooled"].device)


@torch.inference_mode()
def raster_loop(
    transformer: NextScaleTransformer, text: dict[str, torch.Tensor], batch: int, config: SamplingConfig
) -> None:
    """Raster-order AR over the final s x s grid: one token per step against the KV cache."""
    model = transformer.config
    length = model.scale_sizes[-1] ** 2
    device = text["text_pooled"].device
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
    codebook = torch.randn(model.vocab_size, model.latent_dim, device=device, dtype=text["text_pooled"].dtype)
    state = transformer.start(**text)
    positions = transformer.position_embed[:, -length:] + transformer.level_embed.weight[-1]  # (1, n, w)
    x = state.condition.unsqueeze(1)  # (2b, 1, w): the start token predicts the first code
    for index in range(length):
        hidden = x + positions[:, index : index + 1]
        for block, cache, keys, values in zip(transformer.blocks, state.caches, state.text_keys, state.text_values):
            hidden = block(hidden, state.condition, keys, values, state.text_mask, cache=cache)
        logits = transformer._logits(hidden, state.condition)  # (2b, 1, V)
        guided = guided_logits(logits[:batch], logits[batch:], config.cfg_scale)
        codes = sample_codes(guided, generators, config.top_k, config.top_p, config.temperature)  # (b, 1)
        x = transformer.input_embed(codebook[codes]).repeat(2, 1, 1)  # (2b, 1, w)
    synchronize(device)


@torch.inference_mode()
def diffusion_pass(
    transformer: NextScaleTransformer, text: dict[str, torch.Tensor], batch: int, head: nn.Linear, cfg: float
) -> None:
    """One guided denoising pass over the whole final grid (no cache, no mask) and its Euler update."""
    model = transformer.config
    length = model.scale_sizes[-1] ** 2
    state = transformer.start(**text)  # per pass here; text keys/values are under 1% of a pass
    latents = text["text_pooled"].new_zeros(batch, length, model.latent_dim)
    hidden = transformer.input_embed(latents.repeat(2, 1, 1))
    hidden = hidden + transformer.position_embed[:, -length:] + transformer.level_embed.weight[-1]
    for block, keys, values in zip(transformer.blocks, state.text_keys, state.text_values):
        hidden = block(hidden, state.condition, keys, values, state.text_mask)
    velocity = head(hidden)  # (2b, n, latent_dim)
    latents.add_(torch.lerp(velocity[batch:], velocity[:batch], 1.0 + cfg), alpha=-0.02)
    synchronize(latents.device)


def baseline_flops(transformer: NextScaleTransformer, batch: int) -> dict[str, float]:
    """Matmul FLOPs of each way (2 rows per image)."""
    model = transformer.config
    rows, length, last = 2 * batch, model.scale_sizes[-1] ** 2, model.num_scales - 1
    flops = {"next-scale": sum(s.total for s in sampling_flops(model, TEXT_LENGTH, rows))}
    raster = [pass_flops(model, last, 1, index + 1, TEXT_LENGTH, rows, prompt=index == 0) for index in range(length)]
    flops["raster AR"] = sum(s.total for s in raster)
    grid = pass_flops(model, last, length, length, TEXT_LENGTH, rows, prompt=True)
    per_pass = grid.total - grid.head - grid.embedding + 2 * rows * length * model.latent_dim * model.width * 2
    for steps in DIFFUSION_STEPS:
        flops[f"diffusion {steps}"] = steps * per_pass
    return flops


def baselines_section(
    transformer: NextScaleTransformer,
    batch: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    variants: bool = False,
) -> dict[str, Any]:
    """Seconds per call of each way at this batch, measured side by side; ratios to next-scale. `variants`
    adds next-scale without the KV cache and with guidance off for the last 2 scales."""
    config = SamplingConfig()
    text = random_text(2 * batch, device, dtype)
    head = nn.Linear(transformer.config.width, transformer.config.latent_dim).to(device, dtype)
    ways = {
        "next-scale": partial(next_scale_loop, transformer, text, batch, config),
        "raster AR": partial(raster_loop, transformer, text, batch, config),
        "diffusion pass": partial(diffusion_pass, transformer, text, batch, head, config.cfg_scale),
    }
    if variants:  # the KV cache and the guidance window, against the same loop
        ways["next-scale, no KV cache"] = partial(next_scale_loop, transformer, text, batch, config, cached=False)
        window = replace(config, guidance_off_last=2)
        ways["next-scale, guidance off last 2"] = partial(next_scale_loop, transformer, text, batch, window)
    seconds = median_seconds(ways, repeats)
    per_pass = seconds.pop("diffusion pass")
    for steps in DIFFUSION_STEPS:
        seconds[f"diffusion {steps}"] = steps * per_pass
    flops = baseline_flops(transformer, batch)
    if variants:
        model, rows = transformer.config, 2 * batch
        flops["next-scale, no KV cache"] = sum(s.total for s in sampling_flops(model, TEXT_LENGTH, rows, cached=False))
        window = [rows] * (model.num_scales - 2) + [batch] * 2
        flops["next-scale, guidance off last 2"] = sum(s.total for s in sampling_flops(model, TEXT_LENGTH, window))
    return {
        "batch": batch,
        "seconds": seconds,
        "diffusion_pass_seconds": per_pass,
        "flops": flops,
        "slowdown_vs_next_scale": {name: value / seconds["next-scale"] for name, value in seconds.items()},
        "flop_ratio_vs_next_scale": {name: value / flops["next-scale"] for name, value in flops.items()},
    }
