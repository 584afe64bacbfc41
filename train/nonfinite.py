"""Non-finite training: a step whose loss or gradient is NaN or infinite on any process is skipped by every
process (counted, logged), too many in a row stop the run, and non-finite weights are never saved or
exported; metrics stay strict JSON (`finite_json`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from nextscale.train.distributed import local_tensor
from nextscale.train.processes import any_process


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so that json.dumps stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(finite_json(value), indent=2, allow_nan=False) + "\n")


def all_finite(module: nn.Module) -> bool:
    """Whether every floating-point tensor of `module`'s state is finite (under FSDP: this process's shards,
    checked without a collective)."""
    return all(bool(torch.isfinite(local_tensor(t)).all()) for t in module.state_dict().values()
               if t.is_floating_point())


def check_weights(accelerator: Accelerator, parts: list, message: str) -> None:
    """NonFiniteTraining(message) when the weights of a part (an `OptimisedPart`) are not finite."""
    for part in parts:
        if not all_finite(accelerator.unwrap_model(part.module)):
            raise NonFiniteTraining(message)


def count_skip(history: dict, consecutive: int, step: int, limit: int, say: Any) -> int:
    """Record that the update of `step` (0-based) was skipped; return the skips in a row, or raise
    NonFiniteTraining when they reach `limit`."""
    consecutive += 1
    history["skipped_steps"].append(step + 1)
    say(f"step {step + 1}: non-finite loss or gradient, update skipped ({consecutive} in a row)")
    if consecutive >= limit:
        raise NonFiniteTraining(
            f"{consecutive} consecutive steps (up to step {step + 1}) had a non-finite loss or gradient; "
            "stopped without saving them. Lower --learning-rate, check the data, or resume from the "
            "last checkpoint (it holds finite weights)."
        )
    return consecutive


def update_parts(accelerator: Accelerator, active: list, finite: bool, grad_clip: float) -> bool:
    """Clip and step the active parts (`OptimisedPart`s) unless a loss or gradient is non-finite on any process.

    Returns whether the update was skipped. Schedules advance either way (they are functions of the
    step). Under fp16 the gradient scaler keeps handling its own overflows.
    """
    if not accelerator.sync_gradients:
        raise RuntimeError("gradient accumulation is out of step with the optimiser steps")
    skip = any_process(accelerator, not finite)
    if not skip:
        norms = []
        for part in active:
            parameters = [p for p in part.module.parameters() if p.grad is not None]
            if grad_clip > 0:
                norms.append(accelerator.clip_grad_norm_(parameters, grad_clip))
            elif parameters:
                norms.append(torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters])))
        finite_grads = all(bool(torch.isfinite(torch.as_tensor(n)).all()) for n in norms)
        skip = accelerator.scaler is None and any_process(accelerator, not finite_grads)
    for part in active:
        if not skip:
            part.optimizer.step()
        part.optimizer.zero_grad(set_to_none=True)
        part.scheduler.step()
    return skip
