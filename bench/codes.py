"""Code predictability of a tokenizer: per scale, entropy given the parent code and flat vs textured cells.

    python bench/codes.py                                   # the bundled demo tokenizer, 256 portraits of seed 5
    python bench/codes.py --tokenizer runs/tokenizer/model --images 512 --flat-threshold 0.02

Definitions in `nextscale.train.eval.codes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import tyro

from nextscale.sampling.pipeline import DEMO_PIPELINE
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.data import DataConfig, make_dataloader
from nextscale.train.eval.codes import FLAT_THRESHOLD, CodeStatistics, format_code_statistics


@dataclass(frozen=True)
class Args:
    tokenizer: str = str(DEMO_PIPELINE / "tokenizer")
    """Tokenizer directory."""
    images: int = 256
    """Synthetic portraits measured."""
    seed: int = 5
    """Data seed of the portraits (0 is the training data)."""
    flat_threshold: float = FLAT_THRESHOLD
    """A cell is flat when its pixels' std (images in [-1, 1], largest channel) is below this."""
    threads: int = 1
    """torch threads."""


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    model = MultiScaleVQVAE.from_pretrained(args.tokenizer).eval()
    data = DataConfig(image_size=model.config.image_size, synthetic_length=args.images, seed=args.seed)
    stats = CodeStatistics(model.config.scale_sizes, model.config.vocab_size, args.flat_threshold)
    for batch in make_dataloader(data, batch_size=64, shuffle=False, drop_last=False):
        stats.update(batch["image"], model.encode(batch["image"]))
    print(f"{args.tokenizer}: {args.images} portraits (seed {args.seed}), flat = pixel std < {args.flat_threshold}")
    print(format_code_statistics(stats.summary()))


if __name__ == "__main__":
    main(tyro.cli(Args))
