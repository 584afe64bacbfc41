"""The planner's memory estimate against measured training steps: `python -m nextscale.plan.validate`.

    python -m nextscale.plan.validate                  # CPU: three small shapes, fp32 and bf16, +- checkpointing
    python -m nextscale.plan.validate --device cuda    # adds the demo at batch 64 and VAR-d16 sizes, with times

On a CPU the measured peak is tensor storage counted op by op (`nextscale.plan.measure.TensorMemory`); on
CUDA it is `torch.cuda.max_memory_allocated`. Prints one row per case and writes them as JSON (--out).
The results and their reading: docs/experiments/planner-validation.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from nextscale.plan.measure import TrainingStep, measure_step, probe_tokenizer
from nextscale.plan.memory import activations, count_parameters, device_memory
from nextscale.transformer import TransformerConfig
from nextscale.transformer.flops import training_flops

VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
D16 = dict(scale_sizes=VAR_SCALES, vocab_size=4096)

SMALL: dict[str, tuple[TransformerConfig, int, int]] = {
    "tiny text (w64 d2, 130 tokens)": (TransformerConfig.preset("tiny"), 32, 16),
    "demo text (w256 d6, 130 tokens)": (TransformerConfig.preset("demo"), 32, 8),
    "VAR class (w128 d2, qk-norm, 680 tokens)": (
        TransformerConfig.var(2, width=128, num_heads=2, num_classes=10, cross_attention=False, **D16), 0, 4),
}
"""(shape, text tokens, micro-batch) of the CPU cases."""

LARGE: dict[str, tuple[TransformerConfig, int, int]] = {
    "demo text (w256 d6), batch 64": (TransformerConfig.preset("demo"), 32, 64),
    "VAR-d16 class, batch 16": (TransformerConfig.var(16, num_classes=1000, cross_attention=False, **D16), 0, 16),
    "VAR-d16 class, batch 48": (TransformerConfig.var(16, num_classes=1000, cross_attention=False, **D16), 0, 48),
    "d16 text (CLIP-L, 77 tokens), batch 16": (TransformerConfig.var(16, text_width=768, **D16), 77, 16),
}
"""The CUDA cases besides the small ones."""


def estimate(shape: TransformerConfig, text_length: int, batch: int, precision: str, checkpointing: bool) -> int:
    """The planner's peak for one process with the measurement's frozen tokenizer."""
    parameters = count_parameters(shape)
    frozen = 4 * sum(p.numel() for p in probe_tokenizer(shape).parameters())
    activation = activations(shape, text_length, batch, precision, parameters, checkpointing)
    return device_memory("single", 1, parameters, frozen, activation).peak


def case(name: str, shape: TransformerConfig, text_length: int, batch: int, precision: str, checkpointing: bool,
         device: str) -> dict[str, Any]:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    measured = measure_step(shape, text_length, batch, precision, checkpointing, device=device,
                            track=device == "cpu")
    peak = measured.allocated if device == "cuda" else measured.peak
    planned = estimate(shape, text_length, batch, precision, checkpointing)
    return {"case": name, "precision": "fp32" if precision == "no" else precision, "checkpointing": checkpointing,
            "batch": batch, "measured_mb": peak / 1e6, "estimate_mb": planned / 1e6, "ratio": planned / peak}


def step_seconds(shape: TransformerConfig, text_length: int, batch: int, checkpointing: bool, device: str,
                 repeats: int) -> float:
    step = TrainingStep(shape, text_length, batch, "bf16", checkpointing, device)
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak(device: str) -> float:
    """Median FLOP/s of a bf16 8192^3 matrix product (the utilisation's denominator)."""
    left = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    times = []
    for index in range(8):
        torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(left, left)
        torch.cuda.synchronize()
        if index >= 2:
            times.append(time.perf_counter() - started)
    return 2 * 8192**3 / statistics.median(times)


def timing(device: str, repeats: int) -> list[dict[str, Any]]:
    """VAR-d16 and the demo training steps under bf16 autocast, plain and checkpointed: s/step and MFU."""
    peak = matmul_peak(device)
    rows = []
    for name in ("VAR-d16 class, batch 48", "demo text (w256 d6), batch 64"):
        shape, text_length, batch = LARGE[name]
        for checkpointing in (False, True):
            seconds = step_seconds(shape, text_length, batch, checkpointing, device, repeats)
            rows.append({"case": name, "checkpointing": checkpointing, "seconds": seconds,
                         "images_per_second": batch / seconds, "matmul_peak_tflops": peak / 1e12,
                         "mfu": training_flops(shape, text_length, batch) / seconds / peak})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed CUDA steps per case (median)")
    parser.add_argument("--out", type=Path, default=Path("outputs/planner-validation.json"))
    args = parser.parse_args()
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    cases = dict(SMALL, **(LARGE if args.device == "cuda" else {}))
    rows = []
    print(f"{'case':44} {'precision':>9} {'ckpt':>5} {'measured MB':>12} {'estimate MB':>12} {'ratio':>6}")
    for name, (shape, text_length, batch) in cases.items():
        for precision in ("no", "bf16"):
            for checkpointing in (False, True):
                row = case(name, shape, text_length, batch, precision, checkpointing, args.device)
                rows.append(row)
                print(f"{name:44} {row['precision']:>9} {str(checkpointing):>5} {row['measured_mb']:12.1f} "
                      f"{row['estimate_mb']:12.1f} {row['ratio']:6.3f}", flush=True)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
                              "torch": torch.__version__, "memory": rows}
    if args.device == "cuda":
        result["timing"] = timing(args.device, args.repeats)
        for row in result["timing"]:
            print(f"{row['case']:44} ckpt {str(row['checkpointing']):5} {row['seconds'] * 1e3:8.1f} ms/step "
                  f"{row['images_per_second']:8.1f} images/s  MFU {row['mfu']:.1%} of {row['matmul_peak_tflops']:.0f} "
                  "TFLOP/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
