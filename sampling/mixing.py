"""Per-scale prompts: layout from one prompt, details from another (StyleGAN's coarse/fine style mixing).

Scale k of the one loop is conditioned on its own prompt; the coarse scales decide layout and colours,
the fine scales the details, so `--prompt A --detail-prompt B --switch-scale k` draws A's layout with
B's details. Each distinct prompt is encoded once (`scale_conditions`). On the cached path the scales
after the switch attend to the earlier scales' keys and values as they were computed under A, so the
codes of the scales before the switch are exactly those of prompt A alone with the same seed. A
transformer with `layout_context` shows the scales after the switch prompt A beside B (B marked as the
detail prompt), which keeps more of A's layout (docs/experiments/layout-context.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nextscale.sampling.condition import Condition, scale_conditions
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig, SamplingResult, resolve_seeds, sample_scales


def switch_prompts(prompt: str, detail_prompt: str, switch_scale: int, num_scales: int) -> list[str]:
    """One prompt per scale: `prompt` for scales < switch_scale, `detail_prompt` from it on."""
    if not 1 <= switch_scale < num_scales:
        raise ValueError(f"--switch-scale must be in [1, {num_scales - 1}] (the scale where the detail prompt "
                         f"takes over), got {switch_scale}")
    return [prompt if scale < switch_scale else detail_prompt for scale in range(num_scales)]


def mixed_conditions(pipeline: Pipeline, prompts_per_scale: Sequence[Sequence[str]],
                     config: SamplingConfig) -> list[Condition]:
    """Conditions for a batch: `prompts_per_scale[k]` lists the b prompts of scale k (every prompt encoded once)."""
    num_scales = pipeline.transformer.config.num_scales
    if len(prompts_per_scale) != num_scales:
        raise ValueError(f"got prompts for {len(prompts_per_scale)} scales, the model has {num_scales}: give one "
                         "prompt per scale")
    return scale_conditions(pipeline, prompts_per_scale, config.needs_unconditional(num_scales))


@torch.inference_mode()
def generate_mixed(pipeline: Pipeline, prompts_per_image: Sequence[Sequence[str]], seeds: Sequence[int] | int = 0,
                   config: SamplingConfig | None = None, *, progress: bool = False) -> SamplingResult:
    """Generate one image per entry of `prompts_per_image`, each a list of one prompt per scale."""
    config = config or SamplingConfig()
    per_scale = [list(prompts) for prompts in zip(*prompts_per_image)]  # (num_scales, b)
    conditions = mixed_conditions(pipeline, per_scale, config)
    result = sample_scales(pipeline, conditions, seeds, config, progress=progress)
    images = pipeline.tokenizer.decode_latent(result.accumulated).float()
    return SamplingResult(images, result.codes, resolve_seeds(seeds, len(prompts_per_image)))
