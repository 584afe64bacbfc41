"""The `nextscale-sample` command line that reproduces what the page generated.

The page and the command line share the seed rule of `nextscale.sampling.cli`: the images are the
prompts' repeats in order (each prompt `num_images` times), and image i uses seed + i; the same seed
gives the same image whatever the batch, so one image is reproduced on its own with `--seed` set to
its seed and `--num-images 1`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

from nextscale.sampling import SamplingConfig

PROGRAM = "nextscale-sample"
DEFAULTS = SamplingConfig()


@dataclass(frozen=True)
class SampleCommand:
    """What a `nextscale-sample` run needs to redo a generation of the page."""

    prompts: tuple[str, ...]
    """The prompts, in order."""
    num_images: int
    """Images per prompt."""
    seed: int
    """Base seed: image i uses seed + i."""
    sampling: SamplingConfig
    """cfg, schedule, guidance-off-last, top-k, top-p, temperature."""
    checkpoint: str | None = None
    """The pipeline directory, None for the bundled demo."""
    dtype: str = "float32"
    """Weights dtype of the run."""
    detail_prompt: str | None = None
    """Per-scale prompts: the prompt of the scales from `switch_scale` on (the prompts give the layout)."""
    switch_scale: int | None = None
    """First scale drawn from `detail_prompt`."""
    zoom_factor: int | None = None
    """A zoom stack over the prompts (one level each) with this factor between levels."""
    zoom_out: bool = False
    """Zoom out instead of in."""
    class_labels: bool = False
    """The prompts are class numbers of a class-conditional pipeline (`--class-label`)."""

    def arguments(self) -> list[str]:
        """The argument list (without the program name); options equal to the CLI defaults still appear,
        so the line stays right if a default changes."""
        args: list[str] = ["--zoom"] if self.zoom_factor is not None else []
        for prompt in self.prompts:
            args += ["--class-label" if self.class_labels else "--prompt", prompt]
        config = self.sampling
        args += [
            "--num-images", str(self.num_images),
            "--seed", str(self.seed),
            "--cfg", format_number(config.cfg_scale),
            "--guidance-schedule", config.guidance_schedule,
            "--guidance-off-last", str(config.guidance_off_last),
            "--top-k", str(config.top_k if config.top_k is not None else 0),
            "--top-p", format_number(config.top_p),
            "--temperature", format_number(config.temperature),
        ]
        if self.detail_prompt is not None:
            args += ["--detail-prompt", self.detail_prompt, "--switch-scale", str(self.switch_scale)]
        if self.zoom_factor is not None:
            args += ["--zoom-factor", str(self.zoom_factor)] + (["--zoom-out"] if self.zoom_out else [])
        if self.checkpoint is not None:
            args += ["--checkpoint", self.checkpoint]
        if self.dtype != "float32":
            args += ["--dtype", self.dtype]
        return args

    def line(self) -> str:
        """One shell-quoted command line."""
        return shlex.join([PROGRAM, *self.arguments()])

    def image_seeds(self) -> list[int]:
        """The seed of each image, in the order the page shows them."""
        return [self.seed + index for index in range(len(self.prompts) * self.num_images)]

    def image_prompts(self) -> list[str]:
        """The prompt of each image, in the order the page shows them."""
        return [prompt for prompt in self.prompts for _ in range(self.num_images)]

    def single_image(self, index: int) -> SampleCommand:
        """The command that redraws image `index` alone (not for zooms: their prompts are levels)."""
        return replace(self, prompts=(self.image_prompts()[index],), num_images=1, seed=self.image_seeds()[index])


def format_number(value: float) -> str:
    """A float as the shortest text that reads back to the same value (4.0 -> '4', 0.95 -> '0.95')."""
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def split_prompts(text: str) -> list[str]:
    """The prompt box holds one prompt per line; blank lines are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def describe(command: SampleCommand) -> str:
    """The text shown under the gallery: the whole run, then one line per image (when there are several)."""
    lines = ["# all images of this run", command.line()]
    if command.zoom_factor is None and len(command.image_seeds()) > 1:
        lines += ["", "# each image alone"]
        lines += [command.single_image(index).line() for index in range(len(command.image_seeds()))]
    return "\n".join(lines)
