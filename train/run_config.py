"""`RunConfig`: the options every training shares (run, optimiser, checkpoints, processes).

The tokenizer and transformer trainings subclass it and add their own fields; a subclass redeclares a
shared field only to change its default. The command line stays flat (`--learning-rate`, `--resume`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal


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
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    """Autocast precision; bf16 trains 2-3x faster than fp32 on CPUs with AVX512-BF16. This option is the
    one setting: `accelerate launch --mixed_precision` and Accelerate's config file do not change it."""
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
    directory."""
    eval_images: int = 512
    """Held-out images for the final evaluation."""
    tracker: Literal["auto", "tensorboard", "none"] = "auto"
    """Accelerate tracker: TensorBoard when installed (auto), or none."""
    max_nonfinite_steps: int = 20
    """Stop with an error after this many consecutive optimiser steps skipped for a non-finite loss or
    gradient (each skip is logged and counted in metrics.json)."""
    collective_timeout: float = 300.0
    """Seconds a process waits for the others at a collective (gradient all-reduce, barrier) before the
    run stops with an error, e.g. when a peer froze or died (PyTorch's default is 30 minutes)."""
    accept_lost_random_state: bool = False
    """Resume even when a checkpoint's random-number state cannot be restored (loud warning; the run then
    no longer reproduces an uninterrupted one). Without it that is an error."""

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
        if self.collective_timeout == 0:
            raise ValueError("--collective-timeout must be positive (seconds)")


def precision_note(mixed_precision: str, environ: Mapping[str, str]) -> str | None:
    """One line when `accelerate launch` announced another precision than the run's (the launcher prints
    its default 'no' when it has no config file): the run's `--mixed-precision` is the one used."""
    launched = environ.get("ACCELERATE_MIXED_PRECISION")
    if launched is None or launched == mixed_precision:
        return None
    return (f"mixed precision: {mixed_precision} (--mixed-precision); accelerate launch's {launched!r} is not used, "
            f"pass --mixed-precision {launched} to train in it")
