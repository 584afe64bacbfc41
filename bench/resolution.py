"""Cost versus resolution: schedules ending at 8 ... 32 tokens per side on the same backbone shape."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from bench.baselines import next_scale_loop
from bench.common import TEXT_LENGTH, VAR_SCALES, median_seconds, now, peak_memory, perturbed, random_text
from nextscale.sampling.sampler import SamplingConfig
from nextscale.scales import scale_offsets, total_tokens
from nextscale.transformer import NextScaleTransformer, TransformerConfig
from nextscale.transformer.flops import sampling_flops


def schedule_ending_at(side: int) -> tuple[int, ...]:
    """VAR's 256 px schedule (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) stretched to end at `side`: each side
    rounded from side * s / 16, duplicates dropped, 1 always first."""
    sides = sorted({max(1, round(side * size / VAR_SCALES[-1])) for size in VAR_SCALES} | {1})
    return tuple(sides)


def fitted_exponent(tokens: list[float], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(tokens): cost ~ tokens ** exponent."""
    xs, ys = [math.log(t) for t in tokens], [math.log(s) for s in seconds]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return numerator / sum((x - mean_x) ** 2 for x in xs)


@torch.inference_mode()
def scale_seconds(transformer: NextScaleTransformer, text: dict[str, torch.Tensor], batch: int) -> list[float]:
    """Seconds of each scale of one loop (transformer + guidance), for the per-scale share."""
    model = transformer.config
    offsets = scale_offsets(model.scale_sizes)
    state = transformer.start(**text)
    times = []
    for scale in range(model.num_scales):
        start = now()
        tokens = offsets[scale + 1] - offsets[scale]
        inputs = None if scale == 0 else text["text_pooled"].new_zeros(2 * batch, tokens, model.latent_dim)
        transformer.forward_scale(state, scale, inputs)
        times.append(now() - start)
    return times


def resolution_section(
    shape: TransformerConfig, sides: tuple[int, ...], batch: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """Time (transformer + sampling step, batch 1 guided, fp32), peak memory and FLOPs per schedule."""
    config = SamplingConfig()
    text = random_text(2 * batch, device, torch.float32)
    rows = []
    for side in sides:
        scales = schedule_ending_at(side)
        model = replace(shape, scale_sizes=scales)
        torch.manual_seed(0)
        transformer = perturbed(NextScaleTransformer(model).to(device))
        loop = partial(next_scale_loop, transformer, text, batch, config)
        with peak_memory(device) as memory:
            loop()  # also the warm-up
        seconds = median_seconds({"loop": loop}, repeats, warmup=0)["loop"]
        per_scale = scale_seconds(transformer, text, batch)
        rows.append(
            {
                "side": side,
                "scale_sizes": list(scales),
                "tokens": total_tokens(scales),
                "seconds": seconds,
                "peak_memory_mb": memory["peak_mb"],
                "flops": sum(s.total for s in sampling_flops(model, TEXT_LENGTH, 2 * batch)),
                "scale_share": [t / sum(per_scale) for t in per_scale],
            }
        )
        del transformer
    tokens = [row["tokens"] for row in rows]
    return {
        "batch": batch,
        "rows": rows,
        "time_exponent": fitted_exponent(tokens, [row["seconds"] for row in rows]),
        "flop_exponent": fitted_exponent(tokens, [row["flops"] for row in rows]),
    }
