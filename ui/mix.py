"""The Mix tab's work: a layout prompt for the coarse scales, a detail prompt from the switch scale on
(`nextscale.sampling.mixing`), drawn next to each prompt alone with the same seeds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from nextscale.images import to_pil
from nextscale.sampling import SamplingConfig
from nextscale.sampling.mixing import mixed_conditions, switch_prompts
from nextscale.ui.commands import SampleCommand
from nextscale.ui.generation import MAX_SEED, ScaleFrames, sample_streaming
from nextscale.ui.models import LoadedModel

ROWS = ("mix", "layout prompt alone", "detail prompt alone")


@dataclass(frozen=True)
class MixRequest:
    """One press of Mix."""

    layout_prompt: str
    detail_prompt: str
    switch_scale: int
    """First scale drawn from the detail prompt."""
    num_images: int
    seed: int
    sampling: SamplingConfig

    def check(self, num_scales: int, max_images: int) -> None:
        if not self.layout_prompt.strip() or not self.detail_prompt.strip():
            raise ValueError("write both prompts: the layout prompt and the detail prompt")
        if not 1 <= self.switch_scale < num_scales:
            raise ValueError(f"the switch scale must be in [1, {num_scales - 1}] for this model's {num_scales} "
                             f"scales, got {self.switch_scale}")
        if not 1 <= self.num_images <= max_images // len(ROWS):
            raise ValueError(f"the number of images must be in [1, {max_images // len(ROWS)}] (each is drawn "
                             f"three times: mixed and with each prompt alone), got {self.num_images}")
        if not 0 <= self.seed <= MAX_SEED - self.num_images:
            raise ValueError(f"the seed must be in [0, {MAX_SEED - self.num_images}], got {self.seed}")

    def command(self, model: LoadedModel) -> SampleCommand:
        return SampleCommand((self.layout_prompt,), self.num_images, self.seed, self.sampling, model.checkpoint,
                             model.dtype, detail_prompt=self.detail_prompt, switch_scale=self.switch_scale)


@dataclass(frozen=True)
class MixResult:
    mixed: list[Image.Image]
    layout_only: list[Image.Image]
    detail_only: list[Image.Image]
    command: SampleCommand
    seconds: float


def run_mix(model: LoadedModel, request: MixRequest, report: Callable[[ScaleFrames], None]) -> MixResult:
    """Draw the mix and both prompts alone in ONE pass of the loop (rows: mixes, layout, detail; each row
    keeps its seed, so each equals the prompt sampled on its own), reporting every scale."""
    num_scales = len(model.scale_sizes)
    count, seeds = request.num_images, [request.seed + index for index in range(request.num_images)]
    mixed = switch_prompts(request.layout_prompt, request.detail_prompt, request.switch_scale, num_scales)
    rows = [mixed] * count + [[request.layout_prompt] * num_scales] * count + \
        [[request.detail_prompt] * num_scales] * count  # (3n images, num_scales prompts)
    per_scale = [list(prompts) for prompts in zip(*rows)]  # (num_scales, 3n)
    started = time.perf_counter()
    conditions = mixed_conditions(model.pipeline, per_scale, request.sampling)
    frames = sample_streaming(model, conditions, seeds * 3, request.sampling, report, columns=count)
    images = to_pil(frames[-1])
    return MixResult(images[:count], images[count : 2 * count], images[2 * count :], request.command(model),
                     time.perf_counter() - started)
