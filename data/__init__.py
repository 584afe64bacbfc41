"""One loader interface over every registered source (`nextscale.data.sources`).

Every source yields items with at least `{"image": (3, S, S) float in [-1, 1], "caption": str}`; map-style
sources add `"index"` (the item's position), and a source adds its own fields (the class folder its `label`,
the synthetic portraits their `attributes` and `zoom`). `collate` stacks what the items carry.
Unreadable inputs are skipped and counted (`nextscale.data.badinput`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from nextscale.data.badinput import BadInput, BadInputTracker, TooManyBadFiles
from nextscale.data.config import DataConfig, HeldOutConfig
from nextscale.data.decode import IMAGE_SUFFIXES, crop_seed, decode_image
from nextscale.data.sources import get_source, source_names

__all__ = [
    "IMAGE_SUFFIXES",
    "BadInput",
    "BadInputTracker",
    "DataConfig",
    "HeldOutConfig",
    "TooManyBadFiles",
    "build_dataset",
    "collate",
    "crop_seed",
    "decode_image",
    "describe_data",
    "first_batch",
    "held_out",
    "loader_over",
    "make_dataloader",
    "no_items",
    "source_names",
]


def held_out(config: DataConfig) -> DataConfig:
    """The held-out counterpart of a data config: the source's own split (synthetic portraits of another
    seed); a source without one returns the same data (evaluate on a separate folder for a true hold-out)."""
    split = get_source(config.source).held_out
    return split(config) if split is not None else config


def build_dataset(config: DataConfig, shuffle: bool = False) -> Dataset:
    """The dataset of `config.source`; `shuffle` matters only to iterable sources (map-style sources are
    shuffled by the DataLoader's sampler)."""
    return get_source(config.source).build(config, shuffle)


def collate(batch: Sequence[dict]) -> dict:
    """Items -> {"image": (b, 3, S, S), "caption": list[str], "index": (b,) long, ...the source's own fields}.

    `index` is each image's position in a map-style source (-1 for WebDataset streams, which have none);
    per-image caches such as precomputed teacher features are keyed by it. Any other field the items carry
    is collated as its kind asks: tensors stacked, integers into a (b,) long tensor, anything else a list.
    """
    collated = {"image": torch.stack([item["image"] for item in batch]),
                "caption": [item["caption"] for item in batch],
                "index": torch.tensor([item.get("index", -1) for item in batch], dtype=torch.long)}
    for key in batch[0].keys() - collated.keys():
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            collated[key] = torch.stack(values)
        elif isinstance(values[0], int) and not isinstance(values[0], bool):
            collated[key] = torch.tensor(values, dtype=torch.long)
        else:
            collated[key] = values
    return collated


def describe_data(dataset: Dataset) -> str:
    """A dataset of source items as an error names it: its source and path, and what its last pass met (a
    WebDataset's readable samples per shard, the bad inputs skipped)."""
    inner = getattr(dataset, "dataset", dataset)  # under a Subset
    config = getattr(inner, "config", None)
    where = (f"--data.source {config.source}" + (f" {config.path}" if config.path else "")
             if isinstance(config, DataConfig) else type(inner).__name__)
    describe, tracker = getattr(inner, "describe_pass", None), getattr(inner, "tracker", None)
    detail = describe() if describe is not None else tracker.summary() if tracker is not None else ""
    return where + (f" ({detail})" if detail else "")


def no_items(dataset: Dataset) -> ValueError:
    """The error of data that gave no readable item at all, naming it and what to do."""
    return ValueError(f"{describe_data(dataset)} gave no readable image: add images to it, fix the ones named above, "
                      "or point --data.path at another folder or shards")


def first_batch(loader: DataLoader) -> dict:
    """The first batch of `loader`, or `no_items` when its data gives none (an empty tar, a folder of bad files)."""
    batch = next(iter(loader), None)
    if batch is None:
        raise no_items(loader.dataset)
    return batch


def make_dataloader(config: DataConfig, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                    drop_last: bool = True, generator: torch.Generator | None = None) -> DataLoader:
    """A standard DataLoader over `build_dataset(config)` (ready for `accelerator.prepare`)."""
    return loader_over(build_dataset(config, shuffle=shuffle), batch_size, shuffle, num_workers, drop_last, generator)


def loader_over(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                drop_last: bool = True, generator: torch.Generator | None = None) -> DataLoader:
    """A standard DataLoader over a dataset of source items (e.g. a `Subset` of one source).

    Workers are persistent so that bad-input counts and WebDataset pass counters survive epochs. A loader
    that reads in order (no `shuffle`) and is given no `generator` draws its workers' base seed from one of
    its own: reading data for a cache, a preview or an evaluation never moves torch's global generator, so
    what a training draws from it (dropout) is the same whether or not such reading happened.
    """
    iterable = isinstance(dataset, IterableDataset)
    if generator is None and not shuffle:
        generator = torch.Generator().manual_seed(0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and not iterable,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
