"""The Generate tab's work, without any web framework: prompts in, images and their coarse-to-fine
progression out, each scale reported as soon as it is sampled."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nextscale.images import make_grid, to_pil
from nextscale.sampling import SamplingConfig, generate
from nextscale.sampling.outputs import save_progression
from nextscale.ui.commands import SampleCommand
from nextscale.ui.models import LoadedModel

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerateRequest:
    """One press of Generate."""

    prompts: tuple[str, ...]
    """The prompts, one per line of the prompt box."""
    num_images: int
    """Images per prompt."""
    seed: int
    """Base seed: image i uses seed + i."""
    sampling: SamplingConfig
    """cfg, schedule, guidance-off-last, top-k, top-p, temperature."""

    def check(self, max_images: int) -> None:
        """ValueError with a message for the page when the request cannot run."""
        if not self.prompts:
            raise ValueError("write a prompt first (one per line for several)")
        if self.num_images < 1:
            raise ValueError(f"the number of images must be >= 1, got {self.num_images}")
        if self.total_images > max_images:
            raise ValueError(f"{len(self.prompts)} prompts x {self.num_images} images = {self.total_images} "
                             f"images; this server allows at most {max_images} per request")
        if not 0 <= self.seed <= MAX_SEED - self.total_images:
            raise ValueError(f"the seed must be in [0, {MAX_SEED - self.total_images}], got {self.seed}")

    @property
    def total_images(self) -> int:
        return len(self.prompts) * self.num_images

    def command(self, model: LoadedModel) -> SampleCommand:
        return SampleCommand(self.prompts, self.num_images, self.seed, self.sampling, model.checkpoint, model.dtype)


@dataclass(frozen=True)
class ScaleFrames:
    """The batch after one scale: what the live preview shows."""

    scale: int
    """0 = the 1x1 map."""
    num_scales: int
    size: int
    """Side of this scale's token map."""
    grid: Image.Image
    """Every image of the batch after this scale, tiled."""
    seconds: float
    """Since the sampling started."""


@dataclass(frozen=True)
class GenerateResult:
    """What a finished request shows and offers for download."""

    images: list[Image.Image]
    """The images at the model's resolution, in order."""
    captions: list[str]
    progression_gifs: list[Path]
    """One coarse-to-fine GIF per image."""
    progression_strips: list[Path]
    """The same frames side by side, one PNG per image."""
    command: SampleCommand
    seconds: float
    """Sampling time, without the wait in the queue."""


def batch_frames(frames: torch.Tensor, scale: int, num_scales: int, size: int, started: float) -> ScaleFrames:
    """(b, 3, H, W) progression frames of one scale -> the preview grid."""
    columns = min(frames.shape[0], 4)
    return ScaleFrames(scale, num_scales, size, make_grid(frames, columns=columns), time.perf_counter() - started)


def run_generate(
    model: LoadedModel, request: GenerateRequest, directory: Path, report: Callable[[ScaleFrames], None]
) -> GenerateResult:
    """Sample the request on `model`, report each scale's frames, save the progression files under
    `directory` and return everything the page shows."""
    command = request.command(model)
    prompts, seeds = command.image_prompts(), command.image_seeds()
    sizes = model.scale_sizes
    started = time.perf_counter()
    result = generate(model.pipeline, prompts, seeds, request.sampling, return_progression=True)
    assert result.progression is not None
    for scale, frames in enumerate(result.progression):
        report(batch_frames(frames, scale, len(sizes), sizes[scale], started))
    seconds = time.perf_counter() - started
    gifs, strips = [], []
    for index in range(len(prompts)):
        strip, gif = save_progression([frames[index] for frames in result.progression], f"{index:04d}", directory)
        gifs.append(gif)
        strips.append(strip)
    captions = [f"seed {seed}: {prompt}" for seed, prompt in zip(seeds, prompts)]
    return GenerateResult(to_pil(result.images), captions, gifs, strips, command, seconds)
