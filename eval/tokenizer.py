"""Held-out evaluation of a tokenizer: PSNR, the coarse-to-fine curve, codebook health, code
predictability (entropy given the parent code, flat against textured cells; `nextscale.eval.codes`),
throughput."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch

from nextscale.eval.codes import CodeStatistics, format_code_statistics
from nextscale.images import psnr
from nextscale.tokenizer import MultiScaleVQVAE


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage (fraction of codes hit at least once) and perplexity (exp of the code entropy)."""
    total = counts.sum().clamp_min(1)
    probs = counts.float() / total
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"usage": float((counts > 0).float().mean()), "perplexity": float(entropy.exp())}


@torch.no_grad()
def evaluate_tokenizer(tokenizer: MultiScaleVQVAE, batches: Iterable[torch.Tensor]) -> dict:
    """Run the tokenizer over image batches (b, 3, H, W) in [-1, 1]; return a JSON-ready dict.

    `psnr_first_k[k-1]` is the PSNR when decoding from the first k scales only (the coarse-to-fine
    curve); `throughput_images_per_s` times encode + decode of the full pipeline.
    """
    tokenizer.eval()
    config = tokenizer.config
    num_scales = config.num_scales
    per_scale_counts = torch.zeros(num_scales, config.vocab_size, dtype=torch.long)
    psnr_sum = torch.zeros(num_scales, dtype=torch.float64)
    count, seconds = 0, 0.0
    predictability = CodeStatistics(config.scale_sizes, config.vocab_size)
    for images in batches:
        start = time.perf_counter()
        codes = tokenizer.encode(images)
        reconstruction = tokenizer.decode(codes)
        seconds += time.perf_counter() - start
        for k in range(num_scales):
            per_scale_counts[k] += torch.bincount(codes[k].flatten().cpu(), minlength=config.vocab_size)
            partial = reconstruction if k == num_scales - 1 else tokenizer.decode(codes[: k + 1])
            psnr_sum[k] += psnr(partial, images).double().sum().cpu()
        predictability.update(images, codes)
        count += images.shape[0]
    if count == 0:
        raise ValueError("evaluation got no images")
    curve = (psnr_sum / count).tolist()
    codes_summary = predictability.summary() if count > 1 else [{} for _ in config.scale_sizes]
    per_scale = [
        {**codes_summary[k], "scale_size": size, **codebook_stats(per_scale_counts[k])}
        for k, size in enumerate(config.scale_sizes)
    ]
    overall = codebook_stats(per_scale_counts.sum(0))
    return {
        "num_images": count,
        "psnr": curve[-1],
        "psnr_first_k": curve,
        "codebook_usage": overall["usage"],
        "codebook_perplexity": overall["perplexity"],
        "codebook_perplexity_max": float(config.vocab_size),
        "per_scale": per_scale,
        "throughput_images_per_s": count / seconds if seconds > 0 else math.inf,
    }


def format_tokenizer_metrics(metrics: dict) -> str:
    """Human-readable summary of `evaluate_tokenizer`'s output."""
    lines = [
        f"PSNR {metrics['psnr']:.2f} dB on {metrics['num_images']} held-out images; "
        f"codebook usage {100 * metrics['codebook_usage']:.1f}%, perplexity {metrics['codebook_perplexity']:.0f}"
        f" / {metrics['codebook_perplexity_max']:.0f}; encode+decode {metrics['throughput_images_per_s']:.1f} img/s",
        "scale  side  usage%  perplexity  PSNR(first k)",
    ]
    for k, (row, value) in enumerate(zip(metrics["per_scale"], metrics["psnr_first_k"])):
        lines.append(
            f"{k:>5}  {row['scale_size']:>4}  {100 * row['usage']:>6.1f}  {row['perplexity']:>10.1f}  {value:>8.2f}"
        )
    if "conditional_entropy" in metrics["per_scale"][0]:
        lines += ["code predictability (cross-validated perplexity without and with the parent code; "
                  "flat cells: pixel std < 0.02):", format_code_statistics(metrics["per_scale"])]
    return "\n".join(lines)
