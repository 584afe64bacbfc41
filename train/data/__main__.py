"""Look at the synthetic world: `python -m nextscale.train.data --out grid.png --num 64` saves a grid of
portraits and prints their captions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import tyro

from nextscale.images import make_grid
from nextscale.train.data.sources.synthetic import SyntheticConfig, SyntheticPortraits


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


def main(args: GridArgs) -> None:
    dataset = SyntheticPortraits(SyntheticConfig(size=args.size, seed=args.seed, length=args.num))
    items = [dataset[i] for i in range(args.num)]
    for i, item in enumerate(items):
        print(f"{i:3d}  {item['caption']}")
    make_grid(torch.stack([item["image"] for item in items])).save(args.out)


if __name__ == "__main__":
    main(tyro.cli(GridArgs))
