"""What a training step of the bundled transformer costs with a LoRA adapter against a full fine-tune:
seconds per step (wall clock, and the process's CPU time, which other jobs on the machine
disturb less) and peak memory (CUDA: the allocator's peak; CPU: how far the process's resident set
peaks above where it stood before the first step, each variant in a fresh process with the same imports).

    python -m experiments.lora_step_cost --device cpu --batch-size 16 --steps 6 --out cost.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from nextscale.sampling.pipeline import DEMO_PIPELINE
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.lora import LoraOptions, attach_training_adapter
from nextscale.train.optim import adamw_with_schedule
from nextscale.train.var_objective import VarObjective
from nextscale.transformer import NextScaleTransformer

VARIANTS = {"full": 0, "lora-r4": 4, "lora-r16": 16}


def resident_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def one_variant(name: str, device: str, batch_size: int, steps: int) -> dict:
    import peft  # noqa: F401  every variant imports what the LoRA ones do, so their baselines compare

    torch.manual_seed(0)
    model = NextScaleTransformer.from_pretrained(DEMO_PIPELINE / "transformer", map_location=device)
    tokenizer = MultiScaleVQVAE.from_pretrained(DEMO_PIPELINE / "tokenizer", map_location=device)
    if VARIANTS[name]:
        attach_training_adapter(model, LoraOptions(rank=VARIANTS[name]), str(DEMO_PIPELINE))
    model.to(device).train()
    objective = VarObjective(model, tokenizer, 0.0)
    optimizer, _ = adamw_with_schedule(model, 1e-4, 0.05, (0.9, 0.95), 100, 0, 0.2)
    config = model.config
    length = sum(size * size for size in config.scale_sizes)
    codes = torch.randint(0, config.vocab_size, (batch_size, length), device=device)
    condition = {"text_tokens": torch.randn(batch_size, 32, config.text_width, device=device),
                 "text_mask": torch.ones(batch_size, 32, dtype=torch.bool, device=device),
                 "text_pooled": torch.randn(batch_size, config.text_width, device=device)}
    cuda = device.startswith("cuda")
    try:  # reset the high-water mark so that loading the model does not count
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = resident_kib("VmRSS")
    times, cpu_times = [], []
    for step in range(steps + 2):  # two warm-up steps
        if step == 2 and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss, _ = objective(codes, condition)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    peak = torch.cuda.max_memory_allocated() if cuda else (resident_kib("VmHWM") - before) * 1024
    return {"variant": name, "device": device, "batch_size": batch_size, "trainable_parameters": trainable,
            "seconds_per_step": sorted(times[2:])[len(times[2:]) // 2],
            "cpu_seconds_per_step": sorted(cpu_times[2:])[len(cpu_times[2:]) // 2], "peak_memory_bytes": peak,
            "peak_memory_kind": "cuda max_memory_allocated" if cuda else "RSS peak above the pre-step RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variant", choices=list(VARIANTS), help="run one variant here (internal)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args.variant, args.device, args.batch_size, args.steps)))
        return
    rows = []
    for name in VARIANTS:
        out = subprocess.run([sys.executable, "-m", "experiments.lora_step_cost", "--variant", name, "--device",
                              args.device, "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    full = rows[0]
    for row in rows:
        row["time_vs_full"] = row["seconds_per_step"] / full["seconds_per_step"]
        row["cpu_time_vs_full"] = row["cpu_seconds_per_step"] / full["cpu_seconds_per_step"]
        row["memory_vs_full"] = row["peak_memory_bytes"] / full["peak_memory_bytes"]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
