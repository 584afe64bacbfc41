"""Precision: whole samples (text encoding, the scale loop and the decoder) in float32, bf16 and int8, side by side.

    python -m bench.precision --clock cpu                        # the bundled model and a VAR-d16-shaped one
    python -m bench.precision --models demo --repeats 5
    python -m bench.precision --models var --batches 1 --var-depth 16

Every variant of a model is timed interleaved (a, b, c, a, b, c, ...) in one process after one warm-up,
so the ratios to float32 compare like with like; `--clock cpu` on a CPU shared with other jobs. The
first call of each variant (same seeds) also gives its quality against float32: the fraction of equal
codes, the images' max and mean absolute difference and PSNR. The bundled model samples with its
recommended settings; the VAR-shaped one (random weights, the converted class-conditional shape and
VAR's VQVAE shape) greedily (top-k 1, cfg 4), where float32's codes are the reference. Variants:

    float32        the pipeline as loaded (the reference)
    float32+dec    float32, the decoder in bf16 channels-last (`decoder_dtype="auto"` on a native-bf16 CPU)
    bfloat16       every weight and activation in bf16
    int8           int8 linear layers in the transformer, the decoder as float32+dec (`sample.py --dtype int8`)
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # `python bench/precision.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import tyro

from bench.common import VAR_SCALES, load_average, now, perturbed, set_clock
from bench.sampling import timed_parts
from nextscale.sampling.pipeline import Pipeline, load_pipeline
from nextscale.sampling.precision import apply_precision
from nextscale.sampling.sampler import SamplingConfig, SamplingResult, generate
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.train.presets import VAR_TOKENIZER
from nextscale.transformer import NextScaleTransformer, TransformerConfig

VARIANTS: dict[str, tuple[torch.dtype | str, str | None]] = {
    "float32": (torch.float32, None),
    "float32+dec": (torch.float32, "auto"),
    "bfloat16": (torch.bfloat16, None),
    "int8": ("int8", "auto"),
}
"""name -> (load_pipeline's dtype, its decoder_dtype)."""
PROMPTS = ("a man with a beard on a blue background", "a woman with red hair on a green background",
           "a smiling man with glasses", "a woman with blond hair on a purple background")
Model = Literal["demo", "var"]


@dataclass(frozen=True)
class PrecisionBenchConfig:
    """Whole samples in float32, bf16 and int8 side by side, with their difference to float32."""

    models: tuple[Model, ...] = ("demo", "var")
    """demo: the bundled pipeline; var: a VAR-shaped class-conditional pipeline with random weights."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """Which variants to run (the first is the reference of every ratio and difference)."""
    batches: tuple[int, ...] = (1, 8)
    """Images per call."""
    repeats: int = 3
    """Timed calls per variant and batch after the warm-up; the median is reported."""
    warmup: bool = True
    """One untimed call per variant and batch first; --no-warmup times that call too (one repeat is then
    one call: for long runs after a smaller batch has warmed the kernels)."""
    threads: int = 1
    """torch.set_num_threads (1 on a CPU shared with other jobs)."""
    clock: Literal["wall", "cpu"] = "cpu"
    """wall: elapsed time; cpu: this process's CPU time (a shared CPU)."""
    var_depth: int = 16
    """Blocks of the VAR-shaped transformer (VAR-d16: 16, width 1024)."""
    var_width: int | None = None
    """Its width (None: VAR's 64 * depth); heads of 64."""
    var_scales: tuple[int, ...] = VAR_SCALES
    """Its scales (VAR's 256 px layout: 680 tokens); images are 16 x the last side."""
    var_decoder_channels: int = 160
    """Base channels of its VQVAE (VAR's vae_ch160v4096z32: 160)."""
    out: Path = Path("outputs/bench-precision")
    """Where precision.json goes."""


def var_shaped(config: PrecisionBenchConfig) -> Pipeline:
    """A random-weight float32 pipeline of the converted VAR's shape: class-conditional transformer (VAR's
    attention, 1000 classes) and VAR's VQVAE layout (16x downsampling, 4096 codes)."""
    width = config.var_width or 64 * config.var_depth
    scales = config.var_scales
    channels = config.var_decoder_channels
    tokenizer_config = TokenizerConfig(
        image_size=16 * scales[-1], scale_sizes=scales, channel_mult=(1, 1, 2, 2, 4),
        **{**VAR_TOKENIZER, "encoder_channels": channels, "decoder_channels": channels,
           "num_phi": min(VAR_TOKENIZER["num_phi"], len(scales))},
    )
    shape = TransformerConfig.var(config.var_depth, width=width, num_heads=max(width // 64, 1), num_classes=1000,
                                  cross_attention=False, scale_sizes=scales, vocab_size=tokenizer_config.vocab_size)
    torch.manual_seed(0)
    tokenizer = perturbed(MultiScaleVQVAE(tokenizer_config), seed=1)
    return Pipeline(tokenizer, perturbed(NextScaleTransformer(shape)), None)


def variants_of(model: Model, config: PrecisionBenchConfig) -> tuple[dict[str, Pipeline], SamplingConfig, list]:
    """The model's pipelines, one per variant, its sampling settings and its prompts (or class labels)."""
    if model == "demo":
        pipelines = {name: load_pipeline(None, dtype=dtype, decoder_dtype=decoder)
                     for name, (dtype, decoder) in VARIANTS.items() if name in config.variants}
        recommended = next(iter(pipelines.values())).recommended or {}
        sampling = SamplingConfig(cfg_scale=recommended.get("cfg_scale", 4.0), top_k=recommended.get("top_k", 900),
                                  top_p=recommended.get("top_p", 0.95))
        return pipelines, sampling, list(PROMPTS)
    base = var_shaped(config)
    pipelines = {}
    for name, (dtype, decoder) in VARIANTS.items():
        if name in config.variants:
            tokenizer, transformer = apply_precision(copy.deepcopy(base.tokenizer), copy.deepcopy(base.transformer),
                                                     dtype, decoder)
            pipelines[name] = Pipeline(tokenizer, transformer, None)
    return pipelines, SamplingConfig(cfg_scale=4.0, top_k=1), [207, 980, 1, 88, 417, 933, 279, 22]


def difference(reference: SamplingResult, result: SamplingResult) -> dict[str, float]:
    """Equal codes (over every scale) and the images' difference (in [-1, 1]; PSNR over a range of 2)."""
    equal = torch.cat([(a == b).flatten() for a, b in zip(reference.codes, result.codes)]).float().mean()
    gap = (result.images - reference.images).abs()
    mse = float((gap**2).mean())
    return {"equal_codes": float(equal), "max_abs": float(gap.max()), "mean_abs": float(gap.mean()),
            "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else math.inf}


def measure(pipelines: dict[str, Pipeline], sampling: SamplingConfig, jobs: list, batch: int,
            repeats: int, warmup: bool = True) -> list[dict[str, Any]]:
    """One warm-up call per variant (kept for the quality; with `warmup` False, timed as the first repeat),
    then the `repeats` interleaved timed calls."""
    batch_jobs = [jobs[index % len(jobs)] for index in range(batch)]
    first = {name: generate(pipeline, batch_jobs, 0, sampling) for name, pipeline in pipelines.items()} if warmup \
        else {}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
    for _ in range(repeats):
        for name, pipeline in pipelines.items():
            with timed_parts(torch.device("cpu")) as parts:
                start = now()
                result = generate(pipeline, batch_jobs, 0, sampling)
                seconds = now() - start
            first.setdefault(name, result)
            runs[name].append({"total": seconds, **parts})
    reference = next(iter(pipelines))
    rows = []
    for name, values in runs.items():
        medians = {key: statistics.median(run[key] for run in values) for key in values[0]}
        rows.append({"variant": name, "batch": batch, "seconds": medians.pop("total"), "parts": medians,
                     **difference(first[reference], first[name])})
    for row in rows:
        row["ratio"] = row["seconds"] / rows[0]["seconds"]
    return rows


def format_rows(model: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{model}: {'batch':>5} {'variant':>12} {'seconds':>8} {'ratio':>6} {'transf.':>8} {'tokzr':>7} "
             f"{'text':>6} {'eq. codes':>9} {'max|d|':>7} {'mean|d|':>8} {'PSNR':>6}"]
    for row in rows:
        parts = row["parts"]
        lines.append(f"{'':{len(model) + 1}} {row['batch']:5d} {row['variant']:>12} {row['seconds']:8.3f} "
                     f"{row['ratio']:6.2f} {parts['transformer']:8.3f} {parts['tokenizer']:7.3f} {parts['text']:6.3f} "
                     f"{row['equal_codes']:9.3f} {row['max_abs']:7.4f} {row['mean_abs']:8.5f} {row['psnr_db']:6.1f}")
    return lines


def main(config: PrecisionBenchConfig) -> dict[str, Any]:
    torch.set_num_threads(config.threads)
    set_clock(config.clock)
    unknown = [name for name in config.variants if name not in VARIANTS]
    if unknown or not config.variants:
        raise SystemExit(f"error: --variants takes {list(VARIANTS)}, got {list(config.variants)}")
    from bench.run import SuiteConfig, machine  # the suite's machine line (CPU name, threads, torch, load)

    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                               "machine": machine(SuiteConfig(threads=config.threads, clock=config.clock)),
                               "models": {}}
    print(f"{results['machine']['device']}, {config.threads} threads, {config.clock} clock, "
          f"load average {load_average():.1f}", flush=True)
    lines = []
    for model in config.models:
        pipelines, sampling, jobs = variants_of(model, config)
        rows = []
        for batch in config.batches:
            rows += measure(pipelines, sampling, jobs, batch, config.repeats, config.warmup)
            print("\n".join(format_rows(model, [row for row in rows if row["batch"] == batch])), flush=True)
        results["models"][model] = {"sampling": asdict(sampling), "rows": rows}
        lines += format_rows(model, rows)
        del pipelines
    results["machine"]["load_average_end"] = load_average()
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "precision.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(["", *lines, f"wrote {config.out / 'precision.json'}"]), flush=True)
    return results


if __name__ == "__main__":
    main(tyro.cli(PrecisionBenchConfig))
