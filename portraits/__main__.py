"""Look at the synthetic world: `python -m nextscale.portraits --out grid.png --num 64` saves a grid of
portraits and prints their captions; `--zoom 1 2 4` shows each portrait at those zoom levels, one row
per portrait (each level is the centre half of the one before it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import tyro

from nextscale.images import make_grid
from nextscale.portraits.attributes import visible_attributes
from nextscale.portraits.captions import caption_from_attributes
from nextscale.portraits.source import SyntheticConfig, SyntheticPortraits


@dataclass(frozen=True)
class GridArgs:
    """Save a grid of synthetic portraits and print their captions."""

    out: str = "synthetic_grid.png"
    """Output PNG path."""
    num: int = 64
    """Number of portraits."""
    size: int = 64
    """Image side in pixels."""
    seed: int = 0
    """Data seed."""
    zoom: tuple[int, ...] = (1,)
    """Zoom levels to show (1, 2, 4); several: one row per portrait, one column per level."""
    exact_captions: bool = False
    """Print the canonical caption naming every attribute visible at the level, not a training caption."""


def main(args: GridArgs) -> None:
    levels = [SyntheticPortraits(SyntheticConfig(size=args.size, seed=args.seed, length=args.num,
                                                 zoom_levels=(level,))) for level in args.zoom]
    images = []
    for i in range(args.num):
        for dataset in levels:
            item = dataset[i]
            images.append(item["image"])
            caption = item["caption"]
            if args.exact_captions:
                visible = visible_attributes(item["zoom"])
                shown = {k: v for k, v in item["attributes"].items() if k in visible}
                caption = caption_from_attributes(shown, level=item["zoom"])
            print(f"{i:3d} {item['zoom']}x  {caption}")
    make_grid(torch.stack(images), columns=len(levels) if len(levels) > 1 else None).save(args.out)


if __name__ == "__main__":
    main(tyro.cli(GridArgs))
