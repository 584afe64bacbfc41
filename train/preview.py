"""Training previews: sample a fixed prompt list with the project's own sampler, as `sample.py` would.

"The loss looked fine, then inference gave garbage" is most often training and sampling settings that
drifted apart. A preview runs `nextscale.sampling.generate` on the very models and text encoder the
run exports (the pipeline `sample.py` loads), with fixed seeds, so every grid is comparable with the
previous one and with what `sample.py --checkpoint output_dir/pipeline` gives: the run records the
previews' sampling settings in its pipeline as its recommendation (`recommended_sampling`).

The prompts are the run's own: captions drawn from its held-out data (the training data when nothing is
held out), spread over it (`preview_prompts`), unless `--preview.prompts` names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, IterableDataset, Subset

from nextscale.images import save_grid
from nextscale.sampling import Pipeline, SamplingConfig, generate
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer import NextScaleTransformer
from nextscale.transformer.text import TextEncoder


def trained_sampling() -> SamplingConfig:
    """The previews' default sampler settings, which a run records as its pipeline's recommendation: guidance
    2, top-k and top-p off, what the project's adherence evaluations chose for its own small transformers
    (docs/experiments/adherence-bundled-demo.md); VAR's cfg 4, top-k 900, top-p 0.95 are for far larger
    codebooks and models."""
    return SamplingConfig(cfg_scale=2.0, top_k=None, top_p=1.0)


@dataclass(frozen=True)
class PreviewConfig:
    """Sample grids written during training (`output_dir/previews/step_N.png`)."""

    every: int = 200
    """Steps between previews (one is always written at the end); 0 turns previews off."""
    prompts: tuple[str, ...] = ()
    """Prompts of the grid, one row each. Default: --preview.num-prompts captions drawn from the run's
    held-out data (its training data when nothing is held out), spread over it."""
    num_prompts: int = 4
    """How many captions (or, for a class-conditional model, classes) the grid shows when --preview.prompts
    is not given."""
    images_per_prompt: int = 4
    """Columns of the grid: images per prompt, seeds 0, 1, ... (the same at every preview)."""
    sampling: SamplingConfig = field(default_factory=trained_sampling)
    """Sampler settings; the run records their guidance, top-k and top-p in its pipeline as the recommended
    settings, so `sample.py --checkpoint output_dir/pipeline` samples as the previews did."""

    def __post_init__(self) -> None:
        if self.every < 0 or self.images_per_prompt < 1 or self.num_prompts < 1:
            raise ValueError("--preview.every must be >= 0, --preview.images-per-prompt and --preview.num-prompts "
                             ">= 1")


def preview_prompts(config: PreviewConfig, held_out: Dataset | None, train: Dataset) -> tuple[tuple[str, ...], str]:
    """The grid's prompts and where they come from: --preview.prompts when given, else `num_prompts` distinct
    non-empty captions of the held-out items (the training items when there are none), taken at evenly
    spaced positions (the first ones of a stream); the empty prompt when the data has no caption."""
    if config.prompts:
        return tuple(config.prompts), "--preview.prompts"
    dataset, where = (held_out, "held-out") if held_out is not None else (train, "training")
    captions = distinct_captions(dataset, config.num_prompts)
    if not captions:
        return ("",), f"the empty prompt: the {where} data has no captions"
    return captions, f"captions of the {where} data"


def distinct_captions(dataset: Dataset, count: int) -> tuple[str, ...]:
    """Up to `count` distinct non-empty captions of a dataset of source items, read at evenly spaced
    positions of a sized dataset (from the caption alone where the source can, `caption(index)`), else
    the first ones a stream gives."""
    found: list[str] = []
    for caption in captions_of(dataset, count):
        if caption and caption not in found:
            found.append(caption)
            if len(found) == count:
                break
    return tuple(found)


def captions_of(dataset: Dataset, count: int):
    """Captions of `dataset`: a sized one visited at evenly spaced positions first, then all the others."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        for seen, item in enumerate(dataset):
            yield item["caption"]
            if seen >= 64 * count:  # a stream of few distinct captions: stop looking
                return
        return
    total = len(dataset)
    spread = sorted({index * total // count for index in range(count)})
    chosen = set(spread)
    for index in [*spread, *(i for i in range(total) if i not in chosen)]:
        yield caption_at(dataset, index)


def caption_at(dataset: Dataset, index: int) -> str:
    """The caption of item `index`, without decoding its image where the source reads captions alone."""
    base, position = dataset, index
    while isinstance(base, Subset):
        base, position = base.dataset, base.indices[position]
    reader = getattr(base, "caption", None)
    return reader(position) if callable(reader) else dataset[index]["caption"]


def recommended_sampling(config: PreviewConfig) -> dict:
    """The pipeline's recommended sampling settings (`nextscale.sampling.pipeline.record_sampling`'s entry):
    the previews' guidance, top-k and top-p, and where they come from."""
    sampling = config.sampling
    default = sampling == trained_sampling()
    return {"cfg_scale": float(sampling.cfg_scale), "top_k": sampling.top_k, "top_p": float(sampling.top_p),
            "source": "train_var.py, the settings of its previews" + (
                " (the defaults the project's adherence evaluations chose for its own small models; not measured "
                "on this run's data)" if default
                else " (--preview.sampling.*)")}


@torch.no_grad()
def write_preview(config: PreviewConfig, prompts: Sequence[str], tokenizer: MultiScaleVQVAE,
                  transformer: NextScaleTransformer, text_encoder: TextEncoder | None, path: Path) -> Path:
    """Sample the preview grid (rows: `prompts`, or the first `num_prompts` classes of a class-conditional
    model without a text encoder; columns: seeds) and save it; the models' modes are restored."""
    was_training = transformer.training
    transformer.eval()
    try:
        rows: list = list(prompts) if text_encoder is not None else list(
            range(min(len(config.prompts) or config.num_prompts, transformer.config.num_classes)))
        prompts = [prompt for prompt in rows for _ in range(config.images_per_prompt)]
        seeds = [index for _ in rows for index in range(config.images_per_prompt)]
        result = generate(Pipeline(tokenizer.eval(), transformer, text_encoder), prompts, seeds, config.sampling)
    finally:
        transformer.train(was_training)
    return save_grid(result.images, path, columns=config.images_per_prompt)
