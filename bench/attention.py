"""Attention and training-throughput benchmark, measured side by side on this machine.

1. Block-causal self-attention through `scaled_dot_product_attention` (our default) vs the naive
   masked softmax(Q K^T) V reference, at VAR's 10-scale layout (680 tokens) and at the 64 px demo
   layout (130 tokens); fp32, forward, median of `repeats` runs.
2. Training throughput (tokens/s: forward, backward, AdamW step) of the "demo" preset at batch 64 in
   fp32 and with bf16 autocast.

Run: `python bench/attention.py` (under 3 minutes on 2 CPU cores; `--help` for the knobs).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import tyro

from nextscale.scales import block_causal_mask
from nextscale.transformer import NextScaleTransformer, TransformerConfig, attention, naive_attention

LAYOUTS = {
    "VAR 256px, 10 scales": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),  # 680 tokens
    "demo 64px, 6 scales": (1, 2, 3, 4, 6, 8),  # 130 tokens
}


@dataclass(frozen=True)
class BenchConfig:
    """Knobs of the benchmark."""

    threads: int = 2
    """torch.set_num_threads: fixed so that runs compare."""
    repeats: int = 7
    """Timed runs per attention measurement (the median is reported)."""
    batch: int = 4
    """Batch of the attention measurement."""
    heads: int = 8
    """Heads of the attention measurement (head_dim 64, as VAR)."""
    train_batch: int = 64
    """Batch of the training-throughput measurement."""
    train_steps: int = 3
    """Timed optimizer steps per precision (after one warm-up step)."""


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def bench_attention(config: BenchConfig) -> None:
    print(
        f"block-causal self-attention, fp32 forward, batch {config.batch}, {config.heads} heads x 64, "
        f"median of {config.repeats}"
    )
    for name, scale_sizes in LAYOUTS.items():
        mask = block_causal_mask(scale_sizes)  # (L, L) bool
        length = mask.shape[0]
        generator = torch.Generator().manual_seed(0)
        query, key, value = (torch.randn(config.batch, config.heads, length, 64, generator=generator) for _ in range(3))
        torch.testing.assert_close(attention(query, key, value, mask), naive_attention(query, key, value, mask))
        sdpa = median_seconds(partial(attention, query, key, value, mask), config.repeats)
        naive = median_seconds(partial(naive_attention, query, key, value, mask), config.repeats)
        print(
            f"  {name} ({length} tokens): sdpa {sdpa * 1e3:8.2f} ms, naive {naive * 1e3:8.2f} ms, "
            f"naive / sdpa = {naive / sdpa:.2f}x"
        )


def bench_training(config: BenchConfig) -> None:
    model_config = TransformerConfig.preset("demo")
    torch.manual_seed(0)
    model = NextScaleTransformer(model_config).train()
    batch, length = config.train_batch, model_config.num_tokens
    text_mask = torch.ones(batch, 32, dtype=torch.bool)
    text_mask[:, 12:] = False  # captions of ~12 word pieces padded to 32, as the offline encoder
    inputs = {
        "teacher_inputs": torch.randn(batch, length - 1, model_config.latent_dim),
        "text_tokens": torch.randn(batch, 32, model_config.text_width),
        "text_mask": text_mask,
        "text_pooled": torch.randn(batch, model_config.text_width),
    }
    codes = torch.randint(0, model_config.vocab_size, (batch, length))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    print(
        f"training throughput, demo preset ({model.num_parameters() / 1e6:.1f}M parameters, {length} tokens), "
        f"batch {batch}, {config.train_steps} steps after 1 warm-up"
    )

    def step(autocast: bool) -> None:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
        with context:
            logits = model(**inputs)  # (b, L, vocab) fp32
        loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rates = {}
    for label, autocast in (("fp32", False), ("bf16 autocast", True)):
        step(autocast)
        start = time.perf_counter()
        for _ in range(config.train_steps):
            step(autocast)
        rates[label] = batch * length * config.train_steps / (time.perf_counter() - start)
        print(f"  {label:14s}: {rates[label]:8.0f} tokens/s")
    print(f"  bf16 autocast / fp32 = {rates['bf16 autocast'] / rates['fp32']:.2f}x")


def main(config: BenchConfig) -> None:
    torch.set_num_threads(config.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    bench_attention(config)
    bench_training(config)
    # other processes on the cores slow both sides of each ratio, but the absolute rates far more
    print(f"load average after: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
