"""`RunConfig`: the options every training shares (run, optimiser, checkpoints, processes).

The tokenizer and transformer trainings subclass it and add their own fields; a subclass redeclares a
shared field only to change its default. The command line stays flat (`--learning-rate`, `--resume`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class RunConfig:
    """Options shared by every training run."""

    output_dir: str = "runs/run"
    """Where checkpoints, samples, the exported model and `metrics.json` go."""
    steps: int = 1000
    """Optimiser steps."""
    batch_size: int = 32
    """Items per process per micro-batch (gradient accumulation multiplies it)."""
    gradient_accumulation: int = 1
    """Micro-batches per optimiser step."""
    learning_rate: float = 4e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices and conv kernels (never on norms, biases, embeddings, codebook)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    decay_fraction: float = 0.2
    """Fraction of steps in the final cosine decay (warmup-stable-decay)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision. auto: bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU
    with AVX512-BF16 or AMX, where it is faster than fp32), else no (fp32): a CPU without them emulates
    bf16, much slower than fp32 (`resolve_precision`; docs/experiments/cpu-threads-and-precision.md). This
    option is the one setting:
    `accelerate launch --mixed_precision` and Accelerate's config file do not change it."""
    num_workers: int = 0
    """DataLoader worker processes."""
    seed: int = 0
    """Seed of the weights, the data order and every training-time random draw."""
    log_every: int = 25
    """Steps between logged metrics (the points of `loss_curve` in metrics.json)."""
    checkpoint_every: int = 100
    """Steps between full training-state checkpoints (output_dir/checkpoints/step_N)."""
    keep_checkpoints: int = 2
    """How many training-state checkpoints to keep (the newest ones; at least 1)."""
    init_from: str | None = None
    """Start from the weights of an exported model (directory or hub id) with a fresh schedule; its
    architecture must be the one this run builds."""
    resume: str | None = None
    """"latest" (the newest checkpoint that loads; damaged ones are skipped with a warning) or a checkpoint
    directory. The run's saved output_dir/train_config.json gives the defaults (the training scripts)."""
    eval_images: int = 512
    """Held-out images for the final evaluation."""
    tracker: Literal["auto", "tensorboard", "none"] = "auto"
    """Accelerate tracker: TensorBoard when installed (auto), or none. Its logs go to
    output_dir/tensorboard/ (`tensorboard --logdir output_dir/tensorboard`); every logged term is there."""
    max_nonfinite_steps: int = 20
    """Stop with an error after this many consecutive optimiser steps skipped for a non-finite loss or
    gradient (each skip is logged and counted in metrics.json)."""
    collective_timeout: float = 60.0
    """Seconds a process waits for the others at a collective of the steps (gradient all-reduce, the joint
    skip decision, logs) before the run stops with one line, when a peer froze or died (PyTorch's default
    is 30 minutes). Work one process does alone while the others wait (export and evaluation, a cache
    built once, previews, publishing a checkpoint) is waited for however long it takes."""
    overwrite: bool = False
    """Replace the run already in --output-dir: its checkpoints, export, samples and metrics.json are removed
    first (other files there are kept). Without it, a fresh run into the folder of another run is refused."""
    accept_lost_random_state: bool = False
    """Resume even when a checkpoint's random-number state cannot be restored (loud warning; the run then
    no longer reproduces an uninterrupted one). Without it that is an error."""
    activation_checkpointing: bool = False
    """Keep only the input of each transformer block (tokenizer: each ResNet and attention block) for the
    backward pass and run the block again there: much less activation memory for one more forward pass of
    the blocks, the same loss (train/checkpointing.py; docs/experiments/activation-checkpointing.md)."""

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size,
                    "gradient_accumulation": self.gradient_accumulation, "log_every": self.log_every,
                    "checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
                    "eval_images": self.eval_images, "max_nonfinite_steps": self.max_nonfinite_steps}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("learning_rate", "weight_decay", "decay_fraction", "grad_clip", "collective_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError("--warmup-steps and --num-workers must be >= 0")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"--betas must lie in [0, 1), got {self.betas}")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite replaces the run in --output-dir and --resume continues it: pass one")
        if self.collective_timeout == 0:
            raise ValueError("--collective-timeout must be positive (seconds)")


TENSORBOARD_DIR = "tensorboard"
"""The folder under output_dir that holds a run's TensorBoard logs (the run says so in its first lines)."""


def resolve_precision(choice: str, device_type: str, native_bf16: bool) -> str:
    """The autocast precision a run uses: `choice` itself, or for "auto" bf16 where the device computes
    bf16 natively (`native_bf16`, see `has_native_bf16`) and "no" (fp32) elsewhere, as on CPUs without
    AVX512-BF16 or AMX, where bf16 is emulated (a demo tokenizer step took 28x as long as in fp32 on an
    AVX2-only CPU), and on devices other than CUDA and CPU."""
    if choice != "auto":
        return choice
    return "bf16" if native_bf16 and device_type in ("cuda", "cpu") else "no"


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU with bf16 support, or a CPU with AVX512-BF16
    or AMX (PyTorch's CPU probes; a build without them counts as no)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)
    return False


TRAINS_IN = {"no": "runs in fp32 (no autocast)", "bf16": "autocasts in bf16", "fp16": "autocasts in fp16"}
"""What the training does under each `--mixed-precision` value (the runtime hands it to Accelerate)."""


def precision_note(choice: str, used: str, environ: Mapping[str, str]) -> str | None:
    """One line naming the precision a run uses (`used`, resolved from `--mixed-precision choice`) when
    it was chosen automatically, or when `accelerate launch` announced another one. The launcher lists
    its own value among the ones it was not passed (`--mixed_precision` ... `'no'`) when it has no config
    file; the line then says that this value is not the run's, so the first screen says one thing."""
    launched = environ.get("ACCELERATE_MIXED_PRECISION")
    differs = launched is not None and launched != used
    if choice != "auto" and not differs:
        return None
    how = "native bf16 on this device" if used == "bf16" else "no native bf16 on this device"
    line = (f"mixed precision: {used} (--mixed-precision {choice}" + (f": {how})" if choice == "auto" else ")")
            + f": the training {TRAINS_IN.get(used, 'runs in ' + used)}")
    if differs:
        line += (f"; the --mixed_precision {launched!r} that accelerate launch printed is the launcher's own setting "
                 f"and is not used: this command's --mixed-precision is the one setting (pass --mixed-precision "
                 f"{launched} to train in {'fp32' if launched == 'no' else launched})")
    return line
