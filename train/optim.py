"""Optimiser parameter groups and learning-rate schedules (pure functions)."""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices and conv kernels; never norms, biases or embeddings.

    Decaying an embedding or a norm gain shrinks it towards zero for no regularising benefit
    (the nanoGPT / VAR convention).
    """
    no_decay_types = (nn.Embedding, nn.LayerNorm, nn.GroupNorm)
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, no_decay_types) or param.dim() < 2 or "embed" in name or "pos" in name:
                no_decay.append(param)
            else:
                decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_stable_decay(step: int, total_steps: int, warmup_steps: int, decay_fraction: float,
                        min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup, constant plateau, cosine decay over the last `decay_fraction`.

    Warmup-stable-decay keeps the learning rate high while the loss is still falling and anneals
    only at the end (Hu et al. 2024, MiniCPM; Hägele et al. 2024), which suits short CPU runs whose
    length is fixed in steps.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, int(round(total_steps * decay_fraction)))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_with_schedule(
    model: nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float], total_steps: int,
    warmup_steps: int, decay_fraction: float,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `parameter_groups` and its warmup-stable-decay schedule (stepped once per optimiser step)."""
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate, betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_stable_decay(step, total_steps, warmup_steps, decay_fraction)
    )
    return optimizer, scheduler
