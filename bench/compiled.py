"""`torch.compile` of the transformer's blocks: compilation time, then eager vs compiled side by side."""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import PROMPT, random_pipeline, synchronize
from bench.sampling import measure_generate
from nextscale.sampling.sampler import SamplingConfig, generate
from nextscale.transformer import TransformerConfig


def compile_section(
    shape: TransformerConfig, batches: tuple[int, ...], repeats: int, device: torch.device
) -> dict[str, Any]:
    """Seconds of the first compiled call (compilation included), then per batch the median generate time
    and transformer time of eager and compiled pipelines (same weights), interleaved."""
    config = SamplingConfig()
    eager = random_pipeline(shape, device, torch.float32)
    compiled = random_pipeline(shape, device, torch.float32)
    compiled.transformer.compile_blocks()
    start = time.perf_counter()  # wall: the compiler runs in subprocesses, outside this process's CPU time
    for batch in batches:  # every batch size once: the shape-dynamic graphs are built here
        generate(compiled, [PROMPT] * batch, 0, config)
    synchronize(device)
    result: dict[str, Any] = {"compile_seconds": time.perf_counter() - start, "batches": {}}
    for batch in batches:
        measured = measure_generate({"eager": eager, "compiled": compiled}, batch, config, repeats, device)
        saved = measured["eager"]["seconds"] - measured["compiled"]["seconds"]
        result["batches"][batch] = {
            "eager_seconds": measured["eager"]["seconds"],
            "compiled_seconds": measured["compiled"]["seconds"],
            "eager_transformer_seconds": measured["eager"]["parts"]["transformer"],
            "compiled_transformer_seconds": measured["compiled"]["parts"]["transformer"],
            "speedup": measured["eager"]["seconds"] / measured["compiled"]["seconds"],
            "break_even_calls": result["compile_seconds"] / saved if saved > 0 else None,
        }
    return result
