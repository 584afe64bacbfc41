"""The judge: a small CNN that reads the synthetic portraits' attributes back from images.

It scores prompt adherence (do the generated images show the attributes the caption asked for?) and
gives the features of a Fréchet distance between generated and real images. It is trained on freshly
rendered portraits with augmentations that blur, shift and recolour them a little, and on tokenizer
reconstructions, so that it reads the attributes and not the sharpness: generated images are decoded
by the same tokenizer and look like its reconstructions, not like the crisp renders.

Runbook (defaults, 1 CPU thread beside another training run): pools 1 min, 1500 steps 14 min, plus
~5 min to reconstruct 6k images with a tokenizer; 100% per attribute on 2048 held-out renders (600
steps already give >= 99.7%). `metrics.json` also holds the "tokenizer check": the accuracy on the
held-out renders' reconstructions and the agreement with the predictions on the renders themselves.

    python -m nextscale.portraits.judge --output-dir runs/judge --tokenizer runs/tokenizer/model

(the training runs in the shared runtime, `nextscale.portraits.train_judge`; the judge is saved to
`runs/judge/model`, its metrics to `runs/judge/metrics.json`). With `--zoom-levels 1 2 4` it trains on
portraits seen at every zoom level, each attribute scored only where it is visible
(`visible_attributes`), and validates per level; `--init-from` starts from a saved judge.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
import tyro
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nextscale.checkpoint import PretrainedMixin
from nextscale.images import from_uint8, to_uint8
from nextscale.portraits.attributes import ATTRIBUTES, visible_attributes
from nextscale.portraits.concepts import CONCEPTS
from nextscale.portraits.source import SyntheticConfig, SyntheticPortraits
from nextscale.tokenizer import MultiScaleVQVAE


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture of `AttributeJudge`; it names its attributes, so a saved judge is self-describing."""

    image_size: int = 64
    """Side of the square input images, in pixels."""
    channels: tuple[int, ...] = (32, 64, 128, 128)
    """Width of each conv stage; every stage halves the resolution."""
    pooled_size: int = 4
    """Side of the grid kept before the feature layer: a coarse layout (hair above, background around)."""
    feature_dim: int = 256
    """Width of the penultimate features (the Fréchet distance's space)."""
    # Not command-line options: the training data (the synthetic portraits) fixes them.
    attribute_names: Annotated[tuple[str, ...], tyro.conf.Suppress] = tuple(ATTRIBUTES)
    """Attributes read, one head each (default: the synthetic portraits' attributes)."""
    attribute_values: Annotated[tuple[tuple[str, ...], ...], tyro.conf.Suppress] = tuple(ATTRIBUTES.values())
    """Possible values of each attribute, in the order of `attribute_names`."""

    def __post_init__(self) -> None:
        if len(self.attribute_names) != len(self.attribute_values):
            raise ValueError(f"{len(self.attribute_names)} attribute names, {len(self.attribute_values)} value lists")
        for name, values in zip(self.attribute_names, self.attribute_values):
            if len(values) < 2 or len(set(values)) != len(values):
                raise ValueError(f"attribute {name} needs >= 2 distinct values, got {values}")
        final_size = self.image_size // 2 ** len(self.channels)
        if final_size < self.pooled_size:
            raise ValueError(
                f"{len(self.channels)} stages shrink {self.image_size} px to {final_size} px, below pooled_size "
                f"{self.pooled_size}: use fewer stages or a smaller pooled_size"
            )


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class AttributeJudge(nn.Module, PretrainedMixin):
    """Shared conv trunk (3x3 conv, batch norm, ReLU, max-pool per stage) and one linear head per attribute.

    Every attribute is a plain classification, even where it only applies to some portraits (women's
    beard is "no"). Images are (b, 3, H, W) in [-1, 1]; call `.eval()` before `predict` / `features`
    (`from_pretrained` returns an eval-mode judge).
    """

    config_class = JudgeConfig

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = 3
        for out_channels in config.channels:
            layers += [conv_block(width, out_channels), nn.MaxPool2d(2)]
            width = out_channels
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(config.pooled_size), nn.Flatten())
        self.feature_layer = nn.Sequential(nn.Linear(width * config.pooled_size**2, config.feature_dim),
                                           nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, len(values))
                                    for name, values in zip(config.attribute_names, config.attribute_values)})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) -> penultimate features (b, feature_dim)."""
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"the judge reads (b, 3, {size}, {size}) images, got {tuple(images.shape)}; resize first")
        return self.feature_layer(self.trunk(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (b, 3, H, W) -> {attribute: logits (b, num_values)}."""
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) -> value indices (b, num_attributes), in the order of `attribute_names`."""
        return torch.stack([logits.argmax(-1) for logits in self(images).values()], dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        """images (b, 3, H, W) -> the most likely value of every attribute, one dict per image."""
        names, values = self.config.attribute_names, self.config.attribute_values
        return [{name: values[a][i] for a, (name, i) in enumerate(zip(names, row))}
                for row in self.predict_indices(images).tolist()]


def attribute_indices(attributes: Sequence[Mapping[str, str]], config: JudgeConfig) -> torch.Tensor:
    """Attribute dicts -> value indices (b, num_attributes); a missing attribute is -1 (not scored)."""
    lookup = [{value: i for i, value in enumerate(values)} for values in config.attribute_values]
    return torch.tensor([[lookup[a][item[name]] if name in item else -1
                          for a, name in enumerate(config.attribute_names)] for item in attributes])


def attribute_accuracy(predicted: torch.Tensor, target: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per-attribute fraction of matches between (n, A) index tensors, skipping targets of -1."""
    scored = target >= 0
    hits = ((predicted == target) & scored).sum(0).float() / scored.sum(0).clamp_min(1)
    return {name: float(value) for name, value in zip(names, hits)}


@dataclass(frozen=True)
class AugmentationConfig:
    """Training-time degradations, so that the judge reads attributes, not sharpness or exact colours."""

    max_blur_sigma: float = 1.5
    """Gaussian blur with sigma uniform in [0, this] pixels."""
    max_noise_std: float = 0.04
    """Gaussian pixel noise with std uniform in [0, this] (images in [-1, 1])."""
    brightness: float = 0.08
    """Brightness offset uniform in [-this, this] (images in [-1, 1])."""
    contrast: float = 0.1
    """Contrast factor uniform in [1 - this, 1 + this] around each image's mean."""
    max_shift: int = 3
    """Translation by whole pixels in [-this, this] along each axis, edges repeated."""


def augment(images: torch.Tensor, config: AugmentationConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly shift, blur, recolour and add noise to images (b, c, H, W) in [-1, 1], per image."""
    b, c, h, w = images.shape

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(images)

    # Whole-pixel shifts through a translated sampling grid: exact pixel values, borders repeated.
    shift = torch.randint(-config.max_shift, config.max_shift + 1, (b, 2), generator=generator).to(images)
    theta = torch.zeros(b, 2, 3).to(images)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shift * torch.tensor([2 / w, 2 / h]).to(images)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    images = F.grid_sample(images, grid, mode="nearest", padding_mode="border", align_corners=False)
    # Separable Gaussian blur, one kernel per image, as one grouped convolution over (b * c) channels.
    radius = max(1, math.ceil(3 * config.max_blur_sigma))
    sigma = (uniform(b) * config.max_blur_sigma).clamp_min(1e-3)  # ~0: a delta kernel
    offsets = torch.arange(-radius, radius + 1).to(images)
    kernel = torch.exp(-offsets**2 / (2 * sigma[:, None] ** 2))  # (b, k)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b * c, k)
    flat = F.pad(images.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)  # (1, b * c, h + 2r, w)
    images = F.conv2d(flat, kernel[:, None, :, None], groups=b * c).reshape(b, c, h, w)
    contrast = 1 + config.contrast * (2 * uniform(b, 1, 1, 1) - 1)
    brightness = config.brightness * (2 * uniform(b, 1, 1, 1) - 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean + brightness
    noise = torch.randn(images.shape, generator=generator).to(images) * uniform(b, 1, 1, 1) * config.max_noise_std
    return (images + noise).clamp(-1, 1)


def _images_and_attributes(items: list[dict]) -> tuple[list[torch.Tensor], list[dict[str, str]]]:
    """Images and the attributes visible at each item's zoom level (the others are not scored; a concept
    such as the hat is scored at the 1x view only)."""
    return [item["image"] for item in items], [
        {name: value for name, value in item["attributes"].items()
         if name in visible_attributes(item["zoom"]) or (name in CONCEPTS and item["zoom"] == 1)}
        for item in items]


def with_concept_heads(config: JudgeConfig, concepts: tuple[str, ...]) -> JudgeConfig:
    """`config` with one more head per concept (`nextscale.portraits.concepts`) not already read."""
    extra = [name for name in concepts if name not in config.attribute_names]
    return dataclasses.replace(config, attribute_names=(*config.attribute_names, *extra),
                               attribute_values=(*config.attribute_values, *(CONCEPTS[name] for name in extra)))


def render_portraits(seed: int, count: int, size: int, judge_config: JudgeConfig, num_workers: int = 0,
                     zoom_levels: tuple[int, ...] = (1,), concepts: tuple[str, ...] = ()
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic portraits `0 .. count - 1` of `seed`, each at a level drawn from `zoom_levels`: images
    (n, 3, H, W) uint8, labels (n, A) long, -1 where the attribute is not visible at the item's level."""
    dataset = SyntheticPortraits(SyntheticConfig(size=size, seed=seed, length=count, zoom_levels=zoom_levels,
                                                 concepts=concepts))
    loader = DataLoader(dataset, batch_size=256, num_workers=num_workers, collate_fn=_images_and_attributes)
    images, labels = [], []
    for batch_images, batch_attributes in tqdm(loader, desc=f"rendering seed {seed}", unit="batch", leave=False):
        images.append(to_uint8(torch.stack(batch_images)))
        labels.append(attribute_indices(batch_attributes, judge_config))
    return torch.cat(images), torch.cat(labels)


def attribute_loss(logits: Mapping[str, torch.Tensor], labels: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Mean over attributes of the cross-entropy over the images where each is scored (label >= 0);
    attributes scored in none of the images are left out."""
    losses = [F.cross_entropy(logits[name], labels[:, a], ignore_index=-1)
              for a, name in enumerate(names) if (labels[:, a] >= 0).any()]
    return torch.stack(losses).mean()


@torch.no_grad()
def reconstruct(tokenizer: MultiScaleVQVAE, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """uint8 images (n, 3, H, W) -> their tokenizer reconstructions (encode + decode), uint8."""
    tokenizer.eval()
    return torch.cat([to_uint8(tokenizer.decode(tokenizer.encode(from_uint8(chunk))))
                      for chunk in tqdm(images.split(batch_size), desc="reconstructing", leave=False)])


@torch.no_grad()
def predict_all(judge: AttributeJudge, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 images (n, 3, H, W) -> predicted value indices (n, A), in eval mode."""
    judge.eval()
    return torch.cat([judge.predict_indices(from_uint8(chunk)) for chunk in images.split(batch_size)])


def validate(judge: AttributeJudge, images: torch.Tensor, labels: torch.Tensor,
             tokenizer: MultiScaleVQVAE | None = None, scored: Sequence[str] | None = None) -> dict:
    """Per-attribute accuracy on held-out renders and, given a tokenizer, on their reconstructions
    (against the renders' true attributes) and the agreement of the predictions on both; only the
    attributes in `scored` (default: all), e.g. those visible at the renders' zoom level."""
    names = judge.config.attribute_names
    keep = [a for a, name in enumerate(names) if scored is None or name in scored]
    names, labels = [names[a] for a in keep], labels[:, keep]
    predicted = predict_all(judge, images)[:, keep]
    metrics: dict = {"num_images": len(images), "accuracy_real": attribute_accuracy(predicted, labels, names),
                     "exact_match_real": float((predicted == labels).all(1).float().mean())}
    if tokenizer is not None:
        predicted_reconstructed = predict_all(judge, reconstruct(tokenizer, images))[:, keep]
        metrics.update(
            accuracy_reconstruction=attribute_accuracy(predicted_reconstructed, labels, names),
            exact_match_reconstruction=float((predicted_reconstructed == labels).all(1).float().mean()),
            agreement=attribute_accuracy(predicted_reconstructed, predicted, names),
        )
    return metrics


def format_judge_metrics(metrics: dict) -> str:
    """Per-attribute table: accuracy on renders, on reconstructions, and their agreement (per zoom level)."""
    if metrics.get("levels"):
        tables = [f"zoom {level}x\n" + format_judge_metrics({**metrics, **level_metrics, "levels": None})
                  for level, level_metrics in metrics["levels"].items()]
        return "\n".join(tables)
    columns = [("real", "accuracy_real"), ("recon", "accuracy_reconstruction"), ("agree", "agreement")]
    columns = [(title, key) for title, key in columns if key in metrics]
    lines = [f"{'attribute':<12}" + "".join(f"{title:>8}" for title, _ in columns)]
    for name in metrics["accuracy_real"]:
        lines.append(f"{name:<12}" + "".join(f"{100 * metrics[key][name]:>7.2f}%" for _, key in columns))
    exact = [metrics.get("exact_match_real"), metrics.get("exact_match_reconstruction")]
    lines.append(f"{'all correct':<12}" + "".join(f"{100 * value:>7.2f}%" for value in exact if value is not None))
    lines.append(f"{metrics['num_images']} held-out images (seed {metrics['validation_seed']}); {metrics['steps']} "
                 f"steps in {metrics['train_seconds']:.0f} s; pools {metrics['render_seconds']:.0f} s; validation "
                 f"{metrics['validation_seconds']:.0f} s")
    return "\n".join(lines)

