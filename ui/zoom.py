"""The Zoom tab's work: a list of prompts, one per zoom level, rendered as a continuous zoom
(`nextscale.sampling.zoom`: each level's coarse scales come from the centre of the level above)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nextscale.images import to_pil
from nextscale.sampling import SamplingConfig
from nextscale.sampling.zoom import ZOOM_FACTORS, ZoomOptions, zoom
from nextscale.sampling.zoom_video import save_zoom
from nextscale.ui.commands import SampleCommand
from nextscale.ui.generation import MAX_SEED
from nextscale.ui.models import LoadedModel

MAX_LEVELS = 6
FRAMES_PER_LEVEL = 12
FRAME_SIZE = 256


@dataclass(frozen=True)
class ZoomRequest:
    """One press of Zoom."""

    prompts: tuple[str, ...]
    """One prompt per level, the widest first."""
    factor: int
    zoom_out: bool
    seed: int
    sampling: SamplingConfig

    def check(self) -> None:
        if not 2 <= len(self.prompts) <= MAX_LEVELS:
            raise ValueError(f"a zoom needs 2 to {MAX_LEVELS} prompts, one per line (one per level, the widest "
                             f"first), got {len(self.prompts)}")
        if self.factor not in ZOOM_FACTORS:
            raise ValueError(f"the zoom factor must be one of {ZOOM_FACTORS}, got {self.factor}")
        if not 0 <= self.seed <= MAX_SEED - len(self.prompts):
            raise ValueError(f"the seed must be in [0, {MAX_SEED - len(self.prompts)}], got {self.seed}")

    def command(self, model: LoadedModel) -> SampleCommand:
        return SampleCommand(self.prompts, 1, self.seed, self.sampling, model.checkpoint, model.dtype,
                             zoom_factor=self.factor, zoom_out=self.zoom_out)


@dataclass(frozen=True)
class ZoomOutcome:
    levels: list[Image.Image]
    """One picture per level, the widest first (blended)."""
    captions: list[str]
    gif: Path
    video: Path | None
    """The MP4, when imageio-ffmpeg is installed."""
    files: list[Path]
    """Everything written: level PNGs, GIF, MP4."""
    agreement_db: list[float]
    """Low-frequency agreement of each level with its parent's centre before blending (PSNR, dB)."""
    command: SampleCommand
    seconds: float


def run_zoom(model: LoadedModel, request: ZoomRequest, directory: Path) -> ZoomOutcome:
    request.check()
    started = time.perf_counter()
    result = zoom(model.pipeline, request.prompts, request.seed, request.sampling,
                  ZoomOptions(factor=request.factor, zoom_out=request.zoom_out))
    files = save_zoom(result.levels, result.prompts, result.factor, directory, zoom_out=request.zoom_out,
                      frames_per_level=FRAMES_PER_LEVEL, frame_size=FRAME_SIZE)
    seconds = time.perf_counter() - started
    gif = next(path for path in files if path.suffix == ".gif")
    video = next((path for path in files if path.suffix == ".mp4"), None)
    levels = [to_pil(level)[0] for level in result.levels]
    captions = [f"level {index}: {prompt}" for index, prompt in enumerate(result.prompts)]
    agreement = [float(value.mean()) for value in result.agreement_psnr()]
    return ZoomOutcome(levels, captions, gif, video, files, agreement, request.command(model), seconds)
