"""The Generate tab's work, without any web framework: prompts in, images and their coarse-to-fine
progression out, each scale reported as soon as it is sampled."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nextscale.images import make_grid, to_pil
from nextscale.sampling import SamplingConfig
from nextscale.sampling.condition import Condition, build_condition
from nextscale.sampling.constraints import ScaleConstraints
from nextscale.sampling.outputs import save_progression
from nextscale.sampling.sampler import ScaleStep, sample_scales
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
        return SampleCommand(self.prompts, self.num_images, self.seed, self.sampling, model.checkpoint, model.dtype,
                             class_labels=model.class_conditional)


def class_labels(prompts: list[str], num_classes: int) -> list[int]:
    """The prompt lines of a class-conditional model as class numbers, or a ValueError saying what to write."""
    try:
        labels = [int(prompt) for prompt in prompts]
    except ValueError as error:
        raise ValueError(f"this model is class-conditional: write one class number (0 to {num_classes - 1}) per "
                         f"line instead of text") from error
    if any(not 0 <= label < num_classes for label in labels):
        raise ValueError(f"class numbers must be in [0, {num_classes - 1}], got {labels}")
    return labels


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


def batch_frames(frames: torch.Tensor, scale: int, num_scales: int, size: int, started: float,
                 columns: int | None = None) -> ScaleFrames:
    """(b, 3, H, W) progression frames of one scale -> the preview grid (default: as square as the batch)."""
    columns = columns or math.ceil(math.sqrt(frames.shape[0]))
    return ScaleFrames(scale, num_scales, size, make_grid(frames, columns=columns), time.perf_counter() - started)


def sample_streaming(
    model: LoadedModel,
    conditions: Condition | list[Condition],
    seeds: list[int],
    config: SamplingConfig,
    report: Callable[[ScaleFrames], None],
    constraints: ScaleConstraints | None = None,
    columns: int | None = None,
) -> list[torch.Tensor]:
    """Run the scale loop, report every scale's frames as soon as it is sampled (through the loop's
    `on_scale`), and return the frames [(b, 3, H, W), ...] coarse to fine; the last is the images."""
    sizes = model.scale_sizes
    frames: list[torch.Tensor] = []
    started = time.perf_counter()

    def on_scale(step: ScaleStep) -> None:
        assert step.preview is not None
        frames.append(step.preview)
        report(batch_frames(step.preview, step.scale, len(sizes), sizes[step.scale], started, columns))

    sample_scales(model.pipeline, conditions, seeds, config, constraints=constraints, on_scale=on_scale,
                  previews=True)
    return frames


def save_progressions(frames: list[torch.Tensor], directory: Path) -> tuple[list[Path], list[Path]]:
    """Each image's frames as a GIF and a strip PNG under `directory`: (gifs, strips)."""
    gifs, strips = [], []
    for index in range(frames[0].shape[0]):
        strip, gif = save_progression([frame[index] for frame in frames], f"{index:04d}", directory)
        gifs.append(gif)
        strips.append(strip)
    return gifs, strips


def run_generate(
    model: LoadedModel, request: GenerateRequest, directory: Path, report: Callable[[ScaleFrames], None]
) -> GenerateResult:
    """Sample the request on `model`, report each scale's frames while sampling, save the progression
    files under `directory` and return everything the page shows."""
    command = request.command(model)
    prompts, seeds = command.image_prompts(), command.image_seeds()
    started = time.perf_counter()
    given: list[str] | list[int] = prompts
    if model.class_conditional:
        given = class_labels(prompts, model.pipeline.transformer.config.num_classes)
    condition = build_condition(model.pipeline, given, request.sampling.needs_unconditional(len(model.scale_sizes)))
    frames = sample_streaming(model, condition, seeds, request.sampling, report)
    seconds = time.perf_counter() - started
    gifs, strips = save_progressions(frames, directory)
    kind = "class " if model.class_conditional else ""
    captions = [f"seed {seed}: {kind}{prompt}" for seed, prompt in zip(seeds, prompts)]
    return GenerateResult(to_pil(frames[-1]), captions, gifs, strips, command, seconds)
