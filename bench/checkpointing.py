"""Activation checkpointing: peak training memory and step time, plain and checkpointed, side by side."""

from __future__ import annotations

from typing import Any

import torch

from bench.common import TEXT_LENGTH, median_seconds
from nextscale.plan.measure import TrainingStep, measure_step
from nextscale.transformer import TransformerConfig

WAYS = {"plain": False, "checkpointed": True}


def checkpointing_section(shape: TransformerConfig, batch: int, repeats: int, device: torch.device,
                          precisions: tuple[str, ...] = ("no", "bf16")) -> dict[str, Any]:
    """The transformer training step (`nextscale.plan.measure.TrainingStep`) at micro-batch `batch`: its peak
    memory (tensor storage counted op by op; on CUDA the allocator's peak too) and median time, plain and
    with activation checkpointing, in each precision ("no" = fp32, "bf16" autocast)."""
    result: dict[str, Any] = {"batch": batch, "tokens": shape.num_tokens, "depth": shape.depth,
                              "width": shape.width}
    for precision in precisions:
        rows = {}
        for name, checkpointing in WAYS.items():
            measured = measure_step(shape, TEXT_LENGTH, batch, precision, checkpointing, device=device.type,
                                    track=device.type == "cpu")
            rows[name] = {"peak_mb": measured.peak / 1e6, "allocated_mb": measured.allocated / 1e6}
        steps = {name: TrainingStep(shape, TEXT_LENGTH, batch, precision, checkpointing, device.type)
                 for name, checkpointing in WAYS.items()}
        seconds = median_seconds(dict(steps.items()), repeats)
        for name in WAYS:
            rows[name]["seconds"] = seconds[name]
        key = "allocated_mb" if device.type == "cuda" else "peak_mb"
        result["fp32" if precision == "no" else precision] = {
            **rows, "memory_saved": 1 - rows["checkpointed"][key] / rows["plain"][key],
            "time_ratio": rows["checkpointed"]["seconds"] / rows["plain"]["seconds"]}
    return result


def checkpointing_lines(entry: dict[str, Any]) -> list[str]:
    """The section's lines of the printed table."""
    lines = ["", f"activation checkpointing: transformer training step, depth {entry['depth']}, width "
             f"{entry['width']}, {entry['tokens']} tokens, batch {entry['batch']}"]
    for precision in ("fp32", "bf16"):
        if precision not in entry:
            continue
        row = entry[precision]
        plain, checkpointed = row["plain"], row["checkpointed"]
        memory = lambda way: way["allocated_mb"] or way["peak_mb"]
        lines.append(f"  {precision}: peak {memory(plain):.0f} -> {memory(checkpointed):.0f} MB "
                     f"({row['memory_saved']:.0%} less), step {plain['seconds']:.3f} -> "
                     f"{checkpointed['seconds']:.3f} s ({row['time_ratio']:.2f}x)")
    return lines
