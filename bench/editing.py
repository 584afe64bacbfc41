"""Editing benchmark: the cost of an edit against a plain sample of the same size, side by side.

On the bundled demo pipeline (64 px, 6 scales, guidance on), for each batch size: a plain `generate`, an
inpaint (`edit` with an eye-band mask: encoding the image, re-quantising the kept tokens at every scale,
the kept-pixel blend), a variation (`keep_scales` 3), an outpaint and per-scale prompts (two
prompts switched at scale 3). Runs interleave (median of `--repeats`), so load changes hit all alike.
Target: an edit costs at most 1.2x a plain sample.

Run: `python bench/editing.py` (about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import tyro

from nextscale.sampling.editing import EditOptions, edit, outpaint
from nextscale.sampling.mixing import generate_mixed, switch_prompts
from nextscale.sampling.pipeline import load_pipeline
from nextscale.sampling.sampler import SamplingConfig, generate

PROMPT = "a man with a beard and glasses on a blue background"
DETAIL = "a smiling woman with red hair"


@dataclass(frozen=True)
class BenchConfig:
    """Knobs of the benchmark."""

    threads: int = 1
    """torch.set_num_threads (1: steady timings on a shared CPU)."""
    repeats: int = 7
    """Interleaved runs per function; the median is reported."""
    batch_sizes: tuple[int, ...] = (1, 8)
    """Images per call."""


def median_seconds(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, runs interleaved after one warm-up call each."""
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(config: BenchConfig) -> None:
    torch.set_num_threads(config.threads)
    pipeline = load_pipeline(None)
    sampling = SamplingConfig(cfg_scale=2.0)
    size, scales = pipeline.tokenizer.config.image_size, pipeline.transformer.config.num_scales
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bundled demo ({size} px, {scales} scales), "
          f"median of {config.repeats} interleaved runs")
    for batch in config.batch_sizes:
        prompts = [PROMPT] * batch
        image = generate(pipeline, prompts[:1], 123, sampling).images
        known = torch.ones(1, size, size, dtype=torch.bool)
        known[:, size * 3 // 10 : size * 53 // 100, size // 4 : size * 3 // 4] = False
        mixed = [switch_prompts(PROMPT, DETAIL, 3, scales)] * batch
        seconds = median_seconds({
            "plain sample": partial(generate, pipeline, prompts, 0, sampling),
            "inpaint": partial(edit, pipeline, image, prompts, known, 0, sampling),
            "variation (keep 3 scales)": partial(edit, pipeline, image, prompts, None, 0, sampling,
                                                 EditOptions(keep_scales=3)),
            "outpaint (16 px sides)": partial(outpaint, pipeline, image, (16, 16, 16, 16), prompts, 0, sampling),
            "per-scale prompts": partial(generate_mixed, pipeline, mixed, 0, sampling),
        }, config.repeats)
        plain = seconds["plain sample"]
        print(f"  batch {batch}:")
        for name, value in seconds.items():
            verdict = "" if name == "plain sample" else f"  {value / plain:.2f}x  " + (
                "(target <= 1.2x: met)" if value / plain <= 1.2 else "(target <= 1.2x: NOT met)")
            print(f"    {name:28s} {value * 1e3:8.1f} ms{verdict}")


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
