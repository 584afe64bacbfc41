"""Training previews: sample a fixed prompt list with the project's own sampler, as `sample.py` would.

"The loss looked fine, then inference gave garbage" is most often training and sampling settings that
drifted apart. A preview runs `nextscale.sampling.generate` on the very models and text encoder the
run exports (the pipeline `sample.py` loads), with fixed seeds, so every grid is comparable with the
previous one and with what `sample.py --checkpoint output_dir/pipeline` gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nextscale.images import save_grid
from nextscale.sampling import Pipeline, SamplingConfig, generate
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer import NextScaleTransformer
from nextscale.transformer.text import TextEncoder

DEFAULT_PROMPTS = (
    "a man with a beard and glasses on a blue background",
    "a woman with long red hair, smiling",
    "a portrait of a man with short black hair",
    "a woman with glasses on a green background",
)


@dataclass(frozen=True)
class PreviewConfig:
    """Sample grids written during training (`output_dir/previews/step_N.png`)."""

    every: int = 200
    """Steps between previews (one is always written at the end); 0 turns previews off."""
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    """Prompts of the grid, one row each."""
    images_per_prompt: int = 4
    """Columns of the grid: images per prompt, seeds 0, 1, ... (the same at every preview)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampler settings (the ones sample.py uses by default)."""

    def __post_init__(self) -> None:
        if self.every < 0 or self.images_per_prompt < 1 or not self.prompts:
            raise ValueError("--preview.every must be >= 0, --preview.images-per-prompt >= 1, and "
                             "--preview.prompts must name at least one prompt")


@torch.no_grad()
def write_preview(config: PreviewConfig, tokenizer: MultiScaleVQVAE, transformer: NextScaleTransformer,
                  text_encoder: TextEncoder | None, path: Path) -> Path:
    """Sample the preview grid (rows: prompts, or the first classes of a class-conditional model without a
    text encoder; columns: seeds) and save it; the models' modes are restored."""
    was_training = transformer.training
    transformer.eval()
    try:
        rows: list = list(config.prompts) if text_encoder is not None else list(
            range(min(len(config.prompts), transformer.config.num_classes)))
        prompts = [prompt for prompt in rows for _ in range(config.images_per_prompt)]
        seeds = [index for _ in rows for index in range(config.images_per_prompt)]
        result = generate(Pipeline(tokenizer.eval(), transformer, text_encoder), prompts, seeds, config.sampling)
    finally:
        transformer.train(was_training)
    return save_grid(result.images, path, columns=config.images_per_prompt)
