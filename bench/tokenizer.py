"""Tokenizer benchmark: encode+decode throughput (fp32 vs bf16 autocast) and the held-out quality figures.

    python bench/tokenizer.py                       # the bundled demo tokenizer
    python bench/tokenizer.py --tokenizer runs/tokenizer/model --images 512
    python bench/tokenizer.py --zoom 1 2 4          # quality figures at each zoom level of the portraits
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import tyro

from nextscale.data import DataConfig, held_out, make_dataloader
from nextscale.eval.tokenizer import evaluate_tokenizer, format_tokenizer_metrics
from nextscale.sampling.pipeline import DEMO_PIPELINE
from nextscale.tokenizer import MultiScaleVQVAE


@dataclass(frozen=True)
class Args:
    tokenizer: str = str(DEMO_PIPELINE / "tokenizer")
    """Tokenizer directory."""
    images: int = 512
    """Held-out synthetic images for the quality figures."""
    batch_size: int = 64
    """Batch of the throughput measurement."""
    repeats: int = 5
    """Timed repetitions (median reported)."""
    threads: int = 2
    """torch threads (fixed so that runs compare)."""
    zoom: tuple[int, ...] = (1,)
    """Zoom levels of the held-out portraits (1, 2, 4): the quality figures of each."""


def throughput(model: MultiScaleVQVAE, images: torch.Tensor, bf16: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.decode(model.encode(images))
        times.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(times[1:])


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    model = MultiScaleVQVAE.from_pretrained(args.tokenizer)
    for level in args.zoom:
        data = held_out(DataConfig(image_size=model.config.image_size, synthetic_length=args.images,
                                   zoom_levels=(level,)))
        loader = make_dataloader(data, batch_size=64, shuffle=False, drop_last=False)
        print(f"zoom {level}x:")
        print(format_tokenizer_metrics(evaluate_tokenizer(model, (batch["image"] for batch in loader))))
    batch = next(iter(make_dataloader(data, batch_size=args.batch_size, shuffle=False)))["image"]
    fp32 = throughput(model, batch, False, args.repeats)
    bf16 = throughput(model, batch, True, args.repeats)
    print(f"encode+decode at batch {args.batch_size}, {args.threads} threads: fp32 {fp32:.1f} img/s, "
          f"bf16 autocast {bf16:.1f} img/s ({bf16 / fp32:.2f}x)")


if __name__ == "__main__":
    main(tyro.cli(Args))
