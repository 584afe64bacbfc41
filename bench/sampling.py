"""Sampling benchmark: KV cache vs recomputation, guidance switch-off, throughput, memory.

1. The transformer's scale loop (random-init weights, random scale inputs, guidance on: 2 rows per
   image) through the production `CachedLogits` and the reference `RecomputedLogits` of
   `sampling.sampler`, on a VAR-d16-shaped but narrow model at VAR's 10-scale 256 px layout and on the
   "demo" preset at the 64 px layout: time of each path, their ratio, the ratio predicted from matmul
   FLOPs (the reference reprocesses the whole prefix at every scale), the max |logit difference|, and
   the KV cache (`InferenceState.num_bytes`) against 2 * depth * rows * L * width * bytes.
2. Switching guidance off for the last 2 scales (Switti): measured and FLOP-predicted saving.
3. End-to-end `generate` on a random demo pipeline (64 px tokenizer, demo transformer, the packaged
   MiniLM text encoder): images/s at batch 1/4/8/16, peak RSS, and RSS after each of 20 calls.

Run: `python bench/sampling.py` (about 4 minutes on 2 CPU cores; `--quick` about 1 minute).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import tyro

from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import CachedLogits, RecomputedLogits, SamplingConfig, generate
from nextscale.scales import scale_offsets
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.transformer import OFFLINE_TEXT_ENCODER, NextScaleTransformer, TextEncoder, TransformerConfig

TEXT_LENGTH = 32  # the offline encoder's padded prompt length
TEXT_WIDTH = 384  # MiniLM
CALLS = 20  # consecutive generate calls watched for memory growth
SHAPES = {
    "VAR-d16 layout, narrow (depth 16, width 256, 4 heads), 10 scales / 680 tokens": TransformerConfig(
        depth=16,
        width=256,
        num_heads=4,
        scale_sizes=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        vocab_size=4096,
        text_width=TEXT_WIDTH,
    ),
    "demo preset (depth 6, width 256, 4 heads), 6 scales / 130 tokens": TransformerConfig.preset(
        "demo", text_width=TEXT_WIDTH
    ),
}


@dataclass(frozen=True)
class BenchConfig:
    """Knobs of the benchmark."""

    threads: int = 1
    """torch.set_num_threads, fixed so that runs compare. 1 by default: on a CPU shared with other jobs, extra
    threads spin against them and the timings scatter by 10x; raise it on an idle machine."""
    repeats: int = 5
    """Timed runs per measurement (the median is reported)."""
    quick: bool = False
    """End-to-end throughput at batch 1 and 4 only."""


def median_seconds(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; the runs are interleaved, so that a change in the machine's
    load during the measurement hits every function alike."""
    for function in functions.values():
        function()  # warm-up: allocations, kernel selection
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def rss_megabytes() -> float:
    """Current resident set size (Linux /proc), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_megabytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kilobytes on Linux


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with non-zero AdaLN gates (a fresh init makes every block the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def loop_flops(config: TransformerConfig, rows_per_scale: list[int], cached: bool) -> float:
    """Matmul FLOPs (2 per multiply-add) of one scale loop: projections, attention products, MLP, head.

    Cached: scale k processes its n_k new tokens against c_k cached keys, text keys/values once.
    Recomputed: scale k processes all c_k tokens of the prefix (c_k x c_k masked attention, as SDPA
    computes it) and recomputes the text keys/values.
    """
    width, depth, text = config.width, config.depth, TEXT_LENGTH
    hidden = round(width * config.mlp_ratio)
    cross = 1 if config.cross_attention else 0
    per_token = depth * 2 * (4 * width * width + cross * 2 * width * width + 2 * width * hidden)
    per_token += 2 * width * config.vocab_size  # head
    text_keys_values = cross * depth * 2 * text * TEXT_WIDTH * 2 * width
    offsets = scale_offsets(config.scale_sizes)
    total = 0.0
    for scale, rows in enumerate(rows_per_scale):
        keys = offsets[scale + 1]
        queries = offsets[scale + 1] - offsets[scale] if cached else keys
        attention = depth * 4 * queries * (keys + cross * text) * width
        total += rows * (queries * per_token + attention)
        if scale == 0 or not cached:
            total += rows * text_keys_values
    return total


def random_text(rows: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "text_tokens": torch.randn(rows, TEXT_LENGTH, TEXT_WIDTH, generator=generator),
        "text_mask": torch.ones(rows, TEXT_LENGTH, dtype=torch.bool),
        "text_pooled": torch.randn(rows, TEXT_WIDTH, generator=generator),
    }


def run_loop(
    transformer: NextScaleTransformer,
    source_class: type[CachedLogits] | type[RecomputedLogits],
    text: dict[str, torch.Tensor],
    inputs: list[torch.Tensor | None],
    rows_per_scale: list[int],
) -> tuple[list[torch.Tensor], CachedLogits | RecomputedLogits]:
    """The transformer part of `generate`'s loop: per-scale logits, with the given rows at each scale."""
    source = source_class(transformer, text)
    logits = [
        source(scale, None if scale_inputs is None else scale_inputs[:rows], rows)
        for scale, (scale_inputs, rows) in enumerate(zip(inputs, rows_per_scale))
    ]
    return logits, source


@torch.inference_mode()
def bench_cache(config: BenchConfig) -> None:
    print(f"transformer scale loop, 1 image with guidance (2 rows), fp32, median of {config.repeats}")
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        transformer = perturbed(NextScaleTransformer(shape))
        generator = torch.Generator().manual_seed(1)
        rows, offsets = 2, scale_offsets(shape.scale_sizes)
        text = random_text(rows, generator)
        inputs: list[torch.Tensor | None] = [None] + [
            torch.randn(rows, offsets[k + 1] - offsets[k], shape.latent_dim, generator=generator)
            for k in range(1, shape.num_scales)
        ]
        guided = [rows] * shape.num_scales
        switched_off = [rows] * (shape.num_scales - 2) + [rows // 2] * 2
        cached_logits, source = run_loop(transformer, CachedLogits, text, inputs, guided)
        reference_logits, _ = run_loop(transformer, RecomputedLogits, text, inputs, guided)
        difference = max(float((a - b).abs().max()) for a, b in zip(cached_logits, reference_logits))
        loop = partial(run_loop, transformer)
        seconds = median_seconds(
            {
                "cached": partial(loop, CachedLogits, text, inputs, guided),
                "uncached": partial(loop, RecomputedLogits, text, inputs, guided),
                "off": partial(loop, CachedLogits, text, inputs, switched_off),
            },
            config.repeats,
        )
        cached, recomputed, off = seconds["cached"], seconds["uncached"], seconds["off"]
        flops_cached = loop_flops(shape, guided, cached=True)
        flops_ratio = loop_flops(shape, guided, cached=False) / flops_cached
        flops_off = loop_flops(shape, switched_off, cached=True) / flops_cached
        state = source.state  # type: ignore[union-attr]
        self_attention = sum(cache.num_bytes for cache in state.caches)
        formula = 2 * shape.depth * rows * shape.num_tokens * shape.width * 4
        print(f"  {name}: {transformer.num_parameters() / 1e6:.1f}M parameters")
        print(
            f"    cached {cached * 1e3:8.1f} ms   uncached {recomputed * 1e3:8.1f} ms   "
            f"ratio {recomputed / cached:.2f}x (FLOPs predict {flops_ratio:.2f}x; "
            f"cached {flops_cached / cached / 1e9:.1f} GFLOP/s)"
        )
        print(f"    max |cached - uncached logits| = {difference:.2e}")
        print(
            f"    guidance off for the last 2 scales: {off * 1e3:.1f} ms, saves {1 - off / cached:.0%} "
            f"(FLOPs predict {1 - flops_off:.0%})"
        )
        print(
            f"    KV cache: self-attention {self_attention / 1e6:.2f} MB = formula 2*depth*rows*L*width*4 "
            f"{formula / 1e6:.2f} MB ({'match' if self_attention == formula else 'MISMATCH'}); "
            f"with text keys/values {state.num_bytes / 1e6:.2f} MB"
        )
    print(f"  peak RSS so far {peak_rss_megabytes():.0f} MB")


def demo_pipeline() -> Pipeline:
    """Random-weight demo pipeline (64 px, scales (1, 2, 3, 4, 6, 8), 1024 codes) with MiniLM."""
    text_encoder = TextEncoder.from_pretrained(OFFLINE_TEXT_ENCODER)
    torch.manual_seed(0)
    tokenizer = MultiScaleVQVAE(TokenizerConfig()).eval()
    transformer = perturbed(NextScaleTransformer(TransformerConfig.preset("demo", text_width=text_encoder.width)))
    return Pipeline(tokenizer, transformer, text_encoder)


def bench_generate(config: BenchConfig) -> None:
    pipeline = demo_pipeline()
    prompt = "a man with a beard and glasses on a blue background"
    batches = (1, 4) if config.quick else (1, 4, 8, 16)
    print(f"end-to-end generate, demo shape (text encoding, guidance, sampling, decoding), median of {config.repeats}")
    for batch in batches:
        prompts = [prompt] * batch
        seconds = median_seconds(
            {
                str(off_last): partial(generate, pipeline, prompts, 0, SamplingConfig(guidance_off_last=off_last))
                for off_last in (0, 2)
            },
            config.repeats,
        )
        for off_last in (0, 2):
            print(
                f"  batch {batch:2d}, guidance_off_last {off_last}: {seconds[str(off_last)] * 1e3:7.1f} ms/call "
                f"{batch / seconds[str(off_last)]:6.1f} images/s   peak RSS so far {peak_rss_megabytes():.0f} MB"
            )
    usage = []
    for seed in range(CALLS):
        generate(pipeline, [prompt] * 4, seed)
        usage.append(rss_megabytes())
    print(f"  RSS (MB) after each of {CALLS} consecutive batch-4 calls: " + " ".join(f"{mb:.0f}" for mb in usage))
    print(f"  growth from call 2 to call {CALLS}: {usage[-1] - usage[1]:+.1f} MB")


def main(config: BenchConfig) -> None:
    torch.set_num_threads(config.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_cache(config)
    bench_generate(config)


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
