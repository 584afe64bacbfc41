"""One loader interface over every registered source (`nextscale.train.data.sources`).

Every source yields the same item: `{"image": (3, S, S) float in [-1, 1], "caption": str,
"attributes": dict[str, str]}` (attributes are empty outside the synthetic source; synthetic items also
carry their zoom level), and `collate` turns a list of items into `{"image": (b, 3, S, S), "caption":
list[str], "attributes": list[dict], "index": (b,), "label": (b,), "zoom": (b,)}`.
Unreadable inputs are skipped and counted (`nextscale.train.data.badinput`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from nextscale.train.data.badinput import BadInput, BadInputTracker, TooManyBadFiles
from nextscale.train.data.config import DataConfig, HeldOutConfig
from nextscale.train.data.decode import IMAGE_SUFFIXES, crop_seed, decode_image
from nextscale.train.data.sources import get_source, source_names

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
    "held_out",
    "loader_over",
    "make_dataloader",
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
    """Items -> {"image": (b, 3, S, S), "caption": list[str], "attributes": list[dict], "index": (b,) long,
    "label": (b,) long, "zoom": (b,) long}.

    `index` is each image's position in a map-style source (-1 for WebDataset streams, which have none);
    per-image caches such as precomputed teacher features are keyed by it. `label` is the class of each
    image in a class-labelled source (`class-folder`), -1 elsewhere. `zoom` is the synthetic portraits'
    zoom level (1 for every other source).
    """
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "caption": [item["caption"] for item in batch],
        "attributes": [item["attributes"] for item in batch],
        "index": torch.tensor([item.get("index", -1) for item in batch], dtype=torch.long),
        "label": torch.tensor([item.get("label", -1) for item in batch], dtype=torch.long),
        "zoom": torch.tensor([item.get("zoom", 1) for item in batch], dtype=torch.long),
    }


def make_dataloader(config: DataConfig, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                    drop_last: bool = True, generator: torch.Generator | None = None) -> DataLoader:
    """A standard DataLoader over `build_dataset(config)` (ready for `accelerator.prepare`)."""
    return loader_over(build_dataset(config, shuffle=shuffle), batch_size, shuffle, num_workers, drop_last, generator)


def loader_over(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                drop_last: bool = True, generator: torch.Generator | None = None) -> DataLoader:
    """A standard DataLoader over a dataset of source items (e.g. a `Subset` of one source).

    Workers are persistent so that bad-input counts and WebDataset pass counters survive epochs.
    """
    iterable = isinstance(dataset, IterableDataset)
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
