"""Memory: the KV cache against its formula, and resident memory over consecutive `generate` calls."""

from __future__ import annotations

from typing import Any

import torch

from bench.common import PROMPT, perturbed, random_text, rss_megabytes, synchronize
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import generate
from nextscale.scales import scale_offsets
from nextscale.transformer import NextScaleTransformer, TransformerConfig


@torch.inference_mode()
def kv_cache_bytes(shape: TransformerConfig, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Self-attention cache after a whole guided loop (2 rows per image) vs 2 * depth * rows * L * width * bytes."""
    torch.manual_seed(0)
    transformer = perturbed(NextScaleTransformer(shape)).to(device, dtype)
    rows = 2 * batch
    state = transformer.start(**random_text(rows, device, dtype))
    offsets = scale_offsets(shape.scale_sizes)
    for scale in range(shape.num_scales):
        tokens = offsets[scale + 1] - offsets[scale]
        inputs = None if scale == 0 else torch.zeros(rows, tokens, shape.latent_dim, device=device, dtype=dtype)
        transformer.forward_scale(state, scale, inputs)
    measured = sum(cache.num_bytes for cache in state.caches)
    formula = 2 * shape.depth * rows * shape.num_tokens * shape.width * torch.finfo(dtype).bits // 8
    return {"batch": batch, "measured_bytes": measured, "formula_bytes": formula, "with_text_bytes": state.num_bytes}


def memory_growth(pipeline: Pipeline, calls: int, batch: int, device: torch.device) -> dict[str, Any]:
    """Resident memory (CUDA: allocated) after each of `calls` consecutive generate calls."""
    usage = []
    for seed in range(calls):
        generate(pipeline, [PROMPT] * batch, seed)
        synchronize(device)
        usage.append(torch.cuda.memory_allocated() / 1e6 if device.type == "cuda" else rss_megabytes())
    return {"calls": calls, "batch": batch, "megabytes": usage, "growth_mb": usage[-1] - usage[1]}
