"""Sampling: images/s, utilisation and time share per part of the real `generate`, fp32 vs bf16.

`generate` runs unchanged; `timed_parts` wraps (for the duration of a measurement) the transformer's
`start`/`forward_scale`, the sampling step (`guided_logits` + `sample_codes`), the tokenizer's work
(next-scale inputs, code embedding, decoding) and the text encoder, and adds up the time spent in each.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from bench.common import PROMPT, TEXT_LENGTH, now, peak_memory, random_pipeline, synchronize
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig, generate
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.tokenizer.quantizer import MultiScaleQuantizer
from nextscale.transformer import NextScaleTransformer, TextEncoder, TransformerConfig
from nextscale.transformer.flops import guided_sampling_flops

PARTS = ("transformer", "filter+draw", "tokenizer", "text")
# (owner, attribute name, part): methods wrapped on their class, functions in every sampling module
METHODS: tuple[tuple[type, str, str], ...] = (
    (NextScaleTransformer, "start", "transformer"),
    (NextScaleTransformer, "forward_scale", "transformer"),
    (MultiScaleQuantizer, "next_scale_input", "tokenizer"),
    (MultiScaleQuantizer, "embed_scale", "tokenizer"),
    (MultiScaleVQVAE, "decode_latent", "tokenizer"),
    (TextEncoder, "encode", "text"),
)
FUNCTIONS = (("guided_logits", "filter+draw"), ("sample_codes", "filter+draw"))


@contextmanager
def timed_parts(device: torch.device) -> Iterator[dict[str, float]]:
    """Seconds spent in each part while the block runs (outermost calls only)."""
    totals = dict.fromkeys(PARTS, 0.0)
    depth = [0]

    def timed(function: Callable[..., Any], part: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return function(*args, **kwargs)
            depth[0] += 1
            start = now()
            try:
                result = function(*args, **kwargs)
                synchronize(device)
                return result
            finally:
                totals[part] += now() - start
                depth[0] -= 1

        return wrapper

    patched: list[tuple[object, str, object]] = []
    for owner, name, part in METHODS:
        patched.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, timed(getattr(owner, name), part))
    modules = [module for key, module in sys.modules.items() if key.startswith("nextscale.sampling") and module]
    for module in modules:
        for name, part in FUNCTIONS:
            if hasattr(module, name):
                patched.append((module, name, getattr(module, name)))
                setattr(module, name, timed(getattr(module, name), part))
    try:
        yield totals
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def measure_generate(
    pipelines: dict[str, Pipeline], batch: int, config: SamplingConfig, repeats: int, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Interleaved timed `generate` calls of each pipeline (one warm-up each): median seconds, median
    seconds of each part, peak memory of one call."""
    prompts = [PROMPT] * batch
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
    for name, pipeline in pipelines.items():
        with peak_memory(device) as memory:
            generate(pipeline, prompts, 0, config)
        results[name] = {"peak_memory_mb": memory["peak_mb"]}
    for _ in range(repeats):
        for name, pipeline in pipelines.items():
            with timed_parts(device) as parts:
                start = now()
                generate(pipeline, prompts, 0, config)
                synchronize(device)
                seconds = now() - start
            runs[name].append({"total": seconds, **parts})
    for name, values in runs.items():
        medians = {key: statistics.median(run[key] for run in values) for key in values[0]}
        results[name].update(seconds=medians.pop("total"), parts=medians)
    return results


def sampling_section(
    shapes: dict[str, tuple[TransformerConfig, int, tuple[int, ...]]],
    dtypes: dict[str, torch.dtype],
    peaks: dict[str, float],
    repeats: int,
    device: torch.device,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """For each shape (config, the depth it stands for, batches) and batch: fp32 and bf16 interleaved."""
    config = SamplingConfig()
    rows = []
    for shape_name, (shape, full_depth, batches) in shapes.items():
        pipelines = {name: random_pipeline(shape, device, dtype) for name, dtype in dtypes.items()}
        full = replace(shape, depth=full_depth)
        for batch in batches:
            flops = guided_sampling_flops(shape, TEXT_LENGTH, batch)
            full_flops = guided_sampling_flops(full, TEXT_LENGTH, batch)
            measured = measure_generate(pipelines, batch, config, repeats, device)
            for dtype_name, result in measured.items():
                parts = result["parts"]
                transformer = parts["transformer"]
                other = result["seconds"] - transformer
                # a shallower stand-in: the blocks' time scales with depth, the rest does not
                projected = other + transformer * full_flops / flops
                row = {
                    "shape": shape_name,
                    "depth_run": shape.depth,
                    "depth": full_depth,
                    "batch": batch,
                    "dtype": dtype_name,
                    "seconds": result["seconds"],
                    "images_per_second": batch / result["seconds"],
                    "projected_images_per_second": batch / projected,
                    "transformer_flops": flops,
                    "transformer_utilisation": flops / transformer / peaks[dtype_name],
                    "share": {part: parts[part] / result["seconds"] for part in PARTS},
                    "peak_memory_mb": result["peak_memory_mb"],
                }
                rows.append(row)
                log(
                    f"  {shape_name} b{batch} {dtype_name}: {row['images_per_second']:.2f} img/s "
                    f"(util {row['transformer_utilisation']:.0%}, filter+draw {row['share']['filter+draw']:.0%})"
                )
        del pipelines
    return rows
