"""The Accelerate runtime both training loops share: accelerator, tracker, endless batches, result."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration


@dataclass
class TrainResult:
    """What a training run returns: the trained module (on every process) and the main process's metrics."""

    model: torch.nn.Module
    metrics: dict
    extra: dict[str, torch.nn.Module] = field(default_factory=dict)
    """Training-only modules worth keeping (the tokenizer's discriminator)."""


def make_accelerator(
    mixed_precision: str, gradient_accumulation: int, tracker: str | None, output_dir: Path
) -> Accelerator:
    """An Accelerator whose shuffling is seedable, so a resumed run sees the same batches.

    Schedules are defined per optimiser step, so the loops step them once per synchronised step
    themselves: Accelerate's default steps a prepared scheduler once per process, which would run the
    warmup and decay `num_processes` times too fast.
    """
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation,
        step_scheduler_with_optimizer=False,
        log_with=tracker,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def finish_trackers(accelerator: Accelerator) -> None:
    """Close the trackers. Unlike `end_training`, keep the process group, so that one process can run
    several trainings in a row (e.g. the tokenizer, then the transformer); it ends with the process."""
    for tracker in accelerator.trackers:
        tracker.finish()


def resolve_tracker(choice: str) -> str | None:
    if choice == "none":
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if choice == "tensorboard":
            raise ImportError("--tracker tensorboard needs `pip install tensorboard`") from None
        return None
    return "tensorboard"


def endless_batches(accelerator: Accelerator, loader, micro_steps_done: int = 0) -> Iterator:
    """Batches of a prepared DataLoader forever, reshuffled every epoch (`set_epoch`).

    A resumed run passes how many batches it already consumed: whole epochs are skipped by number,
    the rest with `skip_first_batches`, so it continues with the batch it would have seen next.
    """
    try:
        per_epoch = len(loader)
    except TypeError:  # iterable datasets (WebDataset) have no length: no exact mid-epoch resume
        per_epoch = 0
    first_epoch, skip = divmod(micro_steps_done, per_epoch) if per_epoch else (0, 0)
    for epoch in itertools.count(first_epoch):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
