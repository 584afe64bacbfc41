"""The batches of a training: a prepared DataLoader read forever, pass after pass, resumable mid-pass."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator

from nextscale.data import describe_data


def endless_batches(accelerator: Accelerator, loader, micro_steps_done: int = 0, batch_size: int | None = None,
                    source: Any = None) -> Iterator:
    """Batches of a prepared DataLoader forever, reshuffled every epoch (`set_epoch`).

    A resumed run passes how many batches it already consumed: whole epochs are skipped by number,
    the rest with `skip_first_batches`, so it continues with the batch it would have seen next. A pass
    that gives no batch at all is an error naming the data (an empty or too short source would
    otherwise loop forever or fail deep inside Accelerate): `source`, the dataset of source items behind
    the loader (default: the loader's own), and `batch_size`, the run's (a prepared loader may not know it).
    """
    try:
        per_epoch = len(loader)
    except TypeError:  # iterable datasets (WebDataset) have no length: no exact mid-epoch resume
        per_epoch = 0
    first_epoch, skip = divmod(micro_steps_done, per_epoch) if per_epoch else (0, 0)
    for epoch in itertools.count(first_epoch):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        set_data_epoch(loader, epoch)
        produced = 0
        iterator = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
        # Starting an epoch draws a worker seed from torch's global generator; a resumed run starts one
        # mid-epoch, so the draw is kept off the global sequence (dropout, restarts) in every run.
        try:
            with torch.random.fork_rng(devices=[]):
                batch = next(iterator, None)
        except ValueError as error:  # Accelerate's dispatcher of iterable data, on a pass without a batch
            if "does not contain any data" not in str(error):
                raise
            batch = None
        while batch is not None:
            produced += 1
            yield batch
            batch = next(iterator, None)
        if not produced and not skip:
            data = source if source is not None else getattr(loader, "dataset", None)
            detail = f": {describe_data(data)}" if data is not None else ""
            raise ValueError(f"the training data gave no batch of {batch_size or loader.batch_size} in a whole "
                             f"pass{detail}. Add data or lower --batch-size.")
        skip = 0


def set_data_epoch(loader: Any, epoch: int) -> None:
    """Tell the datasets under `loader` (through wrappers such as `Subset`, which hold theirs as
    `.dataset`) which pass begins, e.g. for random crops drawn per pass and item."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        dataset = getattr(dataset, "dataset", None)
