"""The performance suite: `python -m bench` (or `python bench/run.py`); `--help` lists the knobs.

Every figure is the median of `--repeats` runs after one warm-up, with a fixed thread count; each
comparison is measured side by side (interleaved runs) in the same process. Prints a table and writes
`suite.json` and `performance.png` under `--out`.

    python -m bench                                   # this CPU: about 25 minutes on 2 loaded cores, 1 thread
    python -m bench --sections sampling baselines --repeats 3
    python -m bench --device cuda --wide-depth 16 --d16-batches 1 8 16   # a GPU: the real d16 width
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import tyro

from bench.baselines import baselines_section
from bench.checkpointing import checkpointing_section
from bench.common import (
    TEXT_WIDTH,
    VAR_SCALES,
    load_average,
    perturbed,
    random_pipeline,
    set_clock,
    suite_peak_rss_megabytes,
)
from bench.compiled import compile_section
from bench.memory import kv_cache_bytes, memory_growth
from bench.peak import gemm_peak
from bench.report import format_table, plot
from bench.resolution import resolution_section
from bench.sampling import sampling_section
from bench.training import attention_section, training_section
from nextscale.transformer import NextScaleTransformer, TransformerConfig

Section = Literal["peak", "sampling", "baselines", "resolution", "training", "attention", "memory", "compile",
                  "checkpointing"]
# compile is not in the default run: its compilation alone takes minutes on a CPU; nor is checkpointing,
# whose op-by-op memory count of four demo training steps at batch 64 takes minutes too
SECTIONS: tuple[Section, ...] = ("peak", "sampling", "baselines", "resolution", "training", "attention", "memory")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SuiteConfig:
    """Measure nextscale against this machine's limit and against other ways to sample the same backbone."""

    threads: int = 1
    """torch.set_num_threads, fixed so that runs compare (1 on a CPU shared with other jobs)."""
    repeats: int = 5
    """Timed runs per figure after one warm-up; the median is reported."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where to run."""
    sections: tuple[Section, ...] = SECTIONS
    """Which parts to run (the peak always runs: it is the denominator of utilisation); `compile` (not
    in the default) measures torch.compile of the blocks on the demo shape, `checkpointing` (not in the
    default either) the peak memory and time of a demo training step at --checkpointing-batch with and
    without activation checkpointing."""
    batches: tuple[int, ...] = (1, 8, 16)
    """Images per call for the demo shape."""
    d16_batches: tuple[int, ...] = (1, 8)
    """Images per call for the d16 layout (widths 256 and 1024); add 16 where time allows (a GPU)."""
    wide_depth: int = 1
    """Blocks actually run at width 1024 (16 = the real VAR-d16). Fewer on a CPU: utilisation is measured
    on those blocks and images/s is projected to 16 blocks (labelled so)."""
    baseline_batches: tuple[int, ...] = (1, 8)
    """Images per call of the equal-backbone comparison (d16 layout, width 256)."""
    resolution_sides: tuple[int, ...] = (8, 12, 16, 24, 32)
    """Last token-map side of each schedule in the cost-versus-resolution sweep."""
    peak_sizes: tuple[int, ...] | None = None
    """Matrix sides of the GEMM peak (None: 2048, 4096, 8192 on CUDA; 512, 1024, 2048 on a CPU)."""
    train_batch: int = 16
    """Batch of the training-step measurements."""
    checkpointing_batch: int = 64
    """Batch of the activation-checkpointing comparison (the demo training's)."""
    flex: bool = True
    """Try FlexAttention (compiled) in the attention comparison where this torch supports it."""
    memory_calls: int = 20
    """Consecutive generate calls watched for memory growth."""
    clock: Literal["wall", "cpu"] = "wall"
    """wall: elapsed time. cpu: CPU time of this process, for a CPU shared with other jobs (with one thread
    it is the time the work took on its core, whatever the load; every figure is then per CPU-second)."""
    out: Path = Path("outputs/bench")
    """Where suite.json and performance.png go."""


def shapes(config: SuiteConfig) -> dict[str, tuple[TransformerConfig, int, tuple[int, ...]]]:
    """name -> (the config that runs, the depth it stands for, batches)."""
    d16 = dict(scale_sizes=VAR_SCALES, vocab_size=4096, text_width=TEXT_WIDTH)
    return {
        "demo": (TransformerConfig.preset("demo", text_width=TEXT_WIDTH), 6, config.batches),
        "d16-w256": (TransformerConfig(depth=16, width=256, num_heads=4, **d16), 16, config.d16_batches),
        "d16-w1024": (TransformerConfig(depth=config.wide_depth, width=1024, num_heads=16, **d16), 16,
                      config.d16_batches),
    }


def machine(config: SuiteConfig) -> dict[str, Any]:
    device = torch.device(config.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if device.type == "cpu":
        for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {
        "device": name,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average_start": load_average(),
        "clock": config.clock,
    }


def main(config: SuiteConfig) -> dict[str, Any]:
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if config.clock == "cpu" and device.type == "cuda":
        raise SystemExit("error: --clock cpu times the host only; use --clock wall on a GPU")
    set_clock(config.clock)
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}}
    results["machine"] = machine(config)
    log = lambda text: print(text, flush=True)
    log(f"{results['machine']['device']}, {config.threads} threads, load average {load_average():.1f}")
    started = time.perf_counter()

    def section(name: str) -> bool:
        if name in config.sections:
            log(f"[{time.perf_counter() - started:6.0f} s] {name} (load {load_average():.1f})")
            return True
        return False

    section("peak")
    peaks = {}
    for name, dtype in DTYPES.items():
        sizes = config.peak_sizes or ((2048, 4096, 8192) if device.type == "cuda" else (512, 1024, 2048))
        peaks[name] = gemm_peak(device, dtype, sizes, config.repeats)["flops"]
    results["peak_flops"] = peaks
    log(f"  GEMM peak: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s")
    all_shapes = shapes(config)
    if section("sampling"):
        results["sampling"] = sampling_section(all_shapes, DTYPES, peaks, config.repeats, device, log)
    if section("baselines"):
        backbone = perturbed(NextScaleTransformer(all_shapes["d16-w256"][0])).to(device)
        results["baselines"] = [
            baselines_section(backbone, batch, config.repeats, device, torch.float32, variants=batch == 1)
            for batch in config.baseline_batches
        ]
        del backbone
    if section("resolution"):
        results["resolution"] = resolution_section(
            all_shapes["d16-w256"][0], config.resolution_sides, 1, config.repeats, device
        )
    if section("training"):
        results["training"] = training_section(
            TransformerConfig.preset("demo", text_width=TEXT_WIDTH), config.train_batch, config.repeats, device, peaks
        )
    if section("attention"):
        layouts = {"10 scales": VAR_SCALES, "demo 6 scales": TransformerConfig().scale_sizes}
        results["attention"] = attention_section(layouts, 4, 8, config.repeats, device, config.flex)
    if section("memory"):
        results["memory"] = {
            "kv_cache": {
                f"{name} {dtype_name}": kv_cache_bytes(shape, 8, device, dtype)
                for name, (shape, _, _) in all_shapes.items()
                for dtype_name, dtype in DTYPES.items()
            },
            "growth": memory_growth(random_pipeline(all_shapes["demo"][0], device, torch.float32),
                                    config.memory_calls, 4, device),
        }
    if section("checkpointing"):
        results["checkpointing"] = checkpointing_section(all_shapes["demo"][0], config.checkpointing_batch,
                                                         config.repeats, device)
    if section("compile"):
        results["compile"] = compile_section(all_shapes["demo"][0], (1, 8), config.repeats, device)
    results["machine"]["load_average_end"] = load_average()
    results["machine"]["seconds"] = time.perf_counter() - started
    results["peak_rss_mb"] = suite_peak_rss_megabytes()
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "suite.json").write_text(json.dumps(results, indent=1) + "\n")
    log(format_table(results))
    figure = plot(results, config.out / "performance.png")
    log(f"wrote {config.out / 'suite.json'}" + (f" and {figure}" if figure else ""))
    return results


if __name__ == "__main__":
    main(tyro.cli(SuiteConfig))
