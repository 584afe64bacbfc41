"""`--data.source synthetic` (the default): procedurally rendered captioned portraits, offline.

Item i is a pure function of (seed, i); the held-out split is the same world under another seed. With
several zoom levels, item i is the same portrait at a level drawn from (seed, i) by its own generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from nextscale.data.config import DataConfig
from nextscale.data.sources import Source, register_source
from nextscale.portraits.attributes import ZOOM_LEVELS, sample_attributes
from nextscale.portraits.captions import sample_caption
from nextscale.portraits.concepts import check_concepts, item_concepts, with_concepts
from nextscale.portraits.render import render_portrait

HELD_OUT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic portrait dataset."""

    size: int = 64
    """Image side in pixels (the renderer works at any size)."""
    seed: int = 0
    """Data seed: 0 for training, 1 (or any other) for held-out evaluation; distinct seeds, distinct data."""
    length: int = 50_000
    """Number of items (each rendered on the fly from (seed, index))."""
    zoom_levels: tuple[int, ...] = (1,)
    """Zoom levels (1, 2, 4) an item may be seen at, one drawn uniformly per item from this tuple (repeat a
    level to weight it)."""
    concepts: tuple[str, ...] = ()
    """New concepts to add (`nextscale.portraits.concepts`, e.g. ("hat",)); none: the ordinary world."""
    concept_items: int | None = None
    """With concepts: items 0 .. N-1 carry them and the others not; None: each item with probability 1/2."""

    def __post_init__(self) -> None:
        check_concepts(self.concepts)
        if not self.zoom_levels or any(level not in ZOOM_LEVELS for level in self.zoom_levels):
            raise ValueError(f"zoom_levels must be a non-empty tuple of {ZOOM_LEVELS}, got {self.zoom_levels}")

    def zoom_level(self, index: int) -> int:
        """The zoom level of item `index`: a pure function of (seed, index), independent of the item's portrait."""
        if len(self.zoom_levels) == 1:
            return self.zoom_levels[0]
        pick = np.random.default_rng([self.seed, index, len(ZOOM_LEVELS)]).integers(len(self.zoom_levels))
        return self.zoom_levels[pick]


class SyntheticPortraits(Dataset):
    """Map-style dataset of rendered portraits; item i is a pure function of (seed, i)."""

    def __init__(self, config: SyntheticConfig = SyntheticConfig()) -> None:
        self.config = config

    def __len__(self) -> int:
        return self.config.length

    def __getitem__(self, index: int) -> dict:
        """{"image": (3, H, W) float in [-1, 1], "caption": str, "attributes": dict[str, str], "index": int,
        "zoom": int}. `attributes` are the whole portrait's; the caption names only those visible at its zoom."""
        if not 0 <= index < self.config.length:
            raise IndexError(f"index {index} out of range for {self.config.length} synthetic portraits")
        zoom = self.config.zoom_level(index)
        rng = np.random.default_rng([self.config.seed, index])
        attributes = sample_attributes(rng)
        concepts, wording = {}, None
        if self.config.concepts:
            concepts, wording = item_concepts(self.config.concepts, self.config.seed, index, self.config.concept_items)
        pixels = render_portrait(attributes, self.config.size, rng, zoom, concepts)  # (H, W, 3) uint8
        image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
        caption = sample_caption(attributes, rng, zoom)
        if concepts and zoom == 1:  # closer views crop the hat: not named there
            caption = with_concepts(caption, concepts, wording)
        return {"image": image, "caption": caption, "attributes": {**attributes, **concepts}, "index": index,
                "zoom": zoom}


def _build(config: DataConfig, shuffle: bool) -> SyntheticPortraits:
    return SyntheticPortraits(SyntheticConfig(size=config.image_size, seed=config.seed, length=config.synthetic_length,
                                              zoom_levels=config.zoom_levels, concepts=config.concepts,
                                              concept_items=config.concept_items))


def _held_out(config: DataConfig) -> DataConfig:
    return replace(config, seed=config.seed + HELD_OUT_SEED_OFFSET)


register_source(Source("synthetic", _build, needs_path=False, held_out=_held_out))
