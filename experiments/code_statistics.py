"""Code predictability of a tokenizer: per scale, entropy given the parent code and flat vs textured cells.

    python experiments/code_statistics.py          # the bundled demo tokenizer, 256 portraits of seed 5
    python experiments/code_statistics.py --tokenizer runs/tokenizer/model --images 512 --flat-threshold 0.02
    python experiments/code_statistics.py --tokenizer A --against B --figure codes.png  # where each spends codes

Definitions in `nextscale.eval.codes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tyro

from nextscale.data import DataConfig, make_dataloader
from nextscale.eval.codes import FLAT_THRESHOLD, CodeStatistics, format_code_statistics
from nextscale.images import save_grid
from nextscale.sampling.pipeline import DEMO_PIPELINE
from nextscale.tokenizer import MultiScaleVQVAE


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
    against: str | None = None
    """A second tokenizer, measured on the same portraits (and shown in the figure)."""
    figure: str | None = None
    """Write a PNG: the first `figure_images` portraits, then per tokenizer their reconstructions and the
    code length at the finest scale (-log of the code's frequency over the measured portraits; black: a
    common code, white: a code of 1/1024 or rarer), cell by cell."""
    figure_images: int = 8
    """Portraits in the figure."""


def log_code_frequency(codes: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Codes (any shape) -> (vocab_size,): the log of each code's frequency among them (-inf: unused)."""
    counts = torch.bincount(codes.flatten().cpu(), minlength=vocab_size).double()
    return (counts / counts.sum()).log().float()


def code_length_maps(codes: torch.Tensor, log_frequency: torch.Tensor, side: int) -> torch.Tensor:
    """Codes (b, s, s) -> (b, 3, side, side) grey images in [-1, 1] of each cell's code length -log p,
    white at log(1024) nats or more."""
    length = (-log_frequency[codes]).clamp(0, 6.93) / 6.93
    return F.interpolate(length[:, None].float(), size=(side, side), mode="nearest").expand(-1, 3, -1, -1) * 2 - 1


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    paths = [args.tokenizer] + ([args.against] if args.against else [])
    models = [MultiScaleVQVAE.from_pretrained(path).eval() for path in paths]
    config = models[0].config
    data = DataConfig(image_size=config.image_size, synthetic_length=args.images, seed=args.seed)
    stats = [CodeStatistics(m.config.scale_sizes, m.config.vocab_size, args.flat_threshold) for m in models]
    finest: list[list[torch.Tensor]] = [[] for _ in models]
    shown: list[torch.Tensor] = []
    for batch in make_dataloader(data, batch_size=64, shuffle=False, drop_last=False):
        images, first = batch["image"], args.figure is not None and not shown
        if first:
            shown.append(images[: args.figure_images])
        for model, stat, codes_of in zip(models, stats, finest):
            codes = model.encode(images)
            stat.update(images, codes)
            codes_of.append(codes[-1])
            if first:
                shown.append(model.decode([c[: args.figure_images] for c in codes]))
    for path, stat in zip(paths, stats):
        print(f"{path}: {args.images} portraits (seed {args.seed}), flat = pixel std < {args.flat_threshold}")
        print(format_code_statistics(stat.summary()))
    if args.figure:
        rows = [shown[0]]
        for index, (model, codes_of) in enumerate(zip(models, finest)):
            codes = torch.cat(codes_of)
            log_frequency = log_code_frequency(codes, model.config.vocab_size)
            rows += [shown[1 + index], code_length_maps(codes[: args.figure_images], log_frequency,
                                                        config.image_size)]
        print(f"wrote {save_grid(rows, args.figure)}: portraits, then per tokenizer ({', '.join(paths)}) "
              "reconstructions and the finest scale's code length (black: common, white: rare)")


if __name__ == "__main__":
    main(tyro.cli(Args))
