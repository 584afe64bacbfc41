"""Cost of representation alignment with a cached teacher pyramid against a plain tokenizer step.

    python bench/alignment.py                     # demo tokenizer shape, batch 32, bf16, 1 thread
    python bench/alignment.py --teacher-width 64 --variants straight_through latent

One step = the training objective (`TokenizerObjective`: forward, losses), backward and an AdamW step;
the aligned step also looks the pyramids of its batch up in an in-memory `TeacherFeatureCache` (what
`--alignment.cache-dir` gives training), so no teacher runs. Plain and aligned steps alternate and the
median and the best of each are reported: the ratio is measured side by side under the same load. On a
shared machine, time the process's CPU (`--clock cpu`, one thread): other jobs then hardly move it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
import tyro

from nextscale.data import DataConfig
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.tokenizer.losses.alignment import (
    AlignmentConfig,
    AlignmentHead,
    TeacherFeatureCache,
    precompute_teacher_features,
)
from nextscale.train.tokenizer_loop import TokenizerObjective, TokenizerTrainConfig


@dataclass(frozen=True)
class Args:
    batch_size: int = 32
    """Images per step (the demo preset's)."""
    teacher_width: int = 768
    """Width of the cached teacher features (768: DINOv2-base, the design's default teacher)."""
    teacher_grid: int = 16
    """Side of the teacher's patch grid (16 at 224 px with patches of 14)."""
    variants: tuple[str, ...] = ("straight_through", "straight_through:positions", "latent")
    """Aligned steps to time: --alignment.gradient, ":positions" for --alignment.no-project-pooled."""
    bf16: bool = True
    """bf16 autocast, as the demo preset trains."""
    repeats: int = 12
    """Timed steps of each kind (after 2 warmup steps each)."""
    threads: int = 1
    """torch threads."""
    clock: str = "wall"
    """"wall" (perf_counter) or "cpu" (this process's CPU time: robust to other jobs with one thread)."""
    cached_images: int = 256
    """Images in the cache (steps draw random batches of them)."""


class RandomTeacher:
    """Stands in for the teacher when the cache is built: only the cache's contents' shape matters here."""

    def __init__(self, width: int, grid: int, generator: torch.Generator) -> None:
        self.width, self.grid, self.generator, self.resolution = width, grid, generator, grid * 14

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape[0], self.width, self.grid, self.grid, generator=self.generator)


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    model_config = TokenizerConfig()
    scales = model_config.scale_sizes
    images = torch.rand(args.batch_size, 3, 64, 64, generator=generator) * 2 - 1
    with tempfile.TemporaryDirectory() as directory:
        teacher = RandomTeacher(args.teacher_width, args.teacher_grid, generator)
        batches = ((images, torch.arange(i, i + args.batch_size))
                   for i in range(0, args.cached_images, args.batch_size))
        precompute_teacher_features(teacher, batches, scales, directory, "bench")  # type: ignore[arg-type]
        cache = TeacherFeatureCache(directory, "bench", scales)
    objectives: dict[str, TokenizerObjective] = {}
    for name in ("plain", *args.variants):
        gradient, _, where = name.partition(":")
        alignment = AlignmentConfig(teacher="bench", gradient=gradient,  # type: ignore[arg-type]
                                    project_pooled=where != "positions")
        train = TokenizerTrainConfig(model=model_config, data=DataConfig(), alignment=alignment, tracker="none")
        torch.manual_seed(0)
        model = MultiScaleVQVAE(model_config)
        head = None if name == "plain" else AlignmentHead(alignment, model_config.latent_dim, args.teacher_width,
                                                          scales)
        objectives[name] = TokenizerObjective(model, head, train)
    optimizers = {name: torch.optim.AdamW(o.parameters(), lr=1e-4) for name, o in objectives.items()}

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def step(name: str) -> float:
        objective = objectives[name]
        start = clock()
        pyramid = None
        if objective.head is not None:
            indices = torch.randint(0, args.cached_images, (args.batch_size,), generator=generator)
            pyramid = cache.lookup(indices)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            losses = objective(images, pyramid)
        losses["loss"].backward()
        optimizer = optimizers[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return clock() - start

    times: dict[str, list[float]] = {name: [] for name in objectives}
    for repeat in range(args.repeats + 2):
        for name in objectives:
            seconds = step(name)
            if repeat >= 2:
                times[name].append(seconds)
    plain, plain_best = statistics.median(times["plain"]), min(times["plain"])
    print(f"tokenizer step, demo shape, batch {args.batch_size}, {'bf16' if args.bf16 else 'fp32'}, "
          f"{args.threads} thread(s), {args.clock} time, {args.repeats} steps each; alignment from a cached "
          f"pyramid of width {args.teacher_width}:")
    print(f"  {'':<28} {'median':>9}  {'extra':>7}  {'best':>9}  {'extra':>7}")
    for name, seconds in times.items():
        median, best = statistics.median(seconds), min(seconds)
        print(f"  {name:<28} {1000 * median:6.0f} ms  {100 * (median / plain - 1):+6.1f}%  "
              f"{1000 * best:6.0f} ms  {100 * (best / plain_best - 1):+6.1f}%")


if __name__ == "__main__":
    main(tyro.cli(Args))
