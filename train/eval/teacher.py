"""A small alignment teacher that exists offline: a `transformers` `Dinov2Model` trained here.

A measurement instrument for representation alignment, never part of a preset: a tiny DINOv2 (ViT)
trained supervised on the synthetic portraits' attributes (a linear head per attribute on its mean
patch token), saved as a local model directory without the heads, and used as
`--alignment.teacher DIR --alignment.teacher-resolution 64`. It is not the judge and shares nothing
with it (another architecture, other weights, another data seed), so the judge stays an independent
referee of what alignment buys.

    python -m nextscale.train.eval.teacher --out runs/teacher        # defaults: 600 steps of 32 portraits
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from torch import nn

from nextscale.images import from_uint8
from nextscale.train.eval.judge import JudgeConfig, render_portraits


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Train the tiny DINOv2 teacher on the synthetic attributes."""

    out: str = "runs/teacher"
    """Directory of the saved `Dinov2Model` (config.json + model.safetensors) and its metrics.json."""
    image_size: int = 64
    """Side of the portraits (and of the teacher's input)."""
    patch_size: int = 8
    """ViT patch side: 64 px / 8 = an 8x8 patch grid, the demo tokenizer's latent side."""
    hidden_size: int = 64
    """Width of the patch features (the alignment target's width)."""
    layers: int = 3
    """Transformer layers."""
    heads: int = 4
    """Attention heads."""
    train_images: int = 4096
    """Rendered training portraits (data seed 11: neither the tokenizer's nor the judge's data)."""
    steps: int = 600
    """Optimiser steps."""
    batch_size: int = 32
    """Portraits per step."""
    learning_rate: float = 1e-3
    """AdamW learning rate (constant after a 20-step warmup)."""
    seed: int = 0
    """Seed of the weights and of the batch order."""
    data_seed: int = 11
    """Synthetic data seed of the training portraits."""
    validation_images: int = 512
    """Held-out portraits (data seed + 1) for the reported attribute accuracy."""
    threads: int = 1
    """torch threads."""


class AttributeProbe(nn.Module):
    """A `Dinov2Model` and one linear head per attribute on its mean patch token."""

    def __init__(self, config: TeacherTrainConfig, attribute_values: tuple[tuple[str, ...], ...]) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        self.backbone = Dinov2Model(Dinov2Config(
            hidden_size=config.hidden_size, num_hidden_layers=config.layers, num_attention_heads=config.heads,
            intermediate_size=4 * config.hidden_size, patch_size=config.patch_size, image_size=config.image_size))
        self.heads = nn.ModuleList(nn.Linear(config.hidden_size, len(values)) for values in attribute_values)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.backbone(pixel_values=pixels).last_hidden_state  # (b, 1 + g*g, D)
        pooled = hidden[:, 1:].mean(dim=1)  # (b, D)
        return [head(pooled) for head in self.heads]


def teacher_pixels(images: torch.Tensor) -> torch.Tensor:
    """images (b, 3, H, W) in [-1, 1] -> ImageNet-normalised pixels, as `FrozenVisionTeacher` feeds them."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return ((images.float() + 1) / 2 - mean) / std


def train_teacher(config: TeacherTrainConfig) -> dict:
    """Train, save the backbone to `config.out`, return (and write) the metrics."""
    torch.set_num_threads(config.threads)
    judge_config = JudgeConfig()  # only its attribute vocabulary
    images, labels = render_portraits(config.data_seed, config.train_images, config.image_size, judge_config)
    held_images, held_labels = render_portraits(config.data_seed + 1, config.validation_images, config.image_size,
                                                judge_config)
    torch.manual_seed(config.seed)
    probe = AttributeProbe(config, judge_config.attribute_values)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.learning_rate, weight_decay=0.05)
    generator = torch.Generator().manual_seed(config.seed)
    started, losses = time.perf_counter(), []
    probe.train()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * min(1.0, (step + 1) / 20)
        pick = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        logits = probe(teacher_pixels(from_uint8(images[pick])))
        target = labels[pick]
        loss = sum(F.cross_entropy(out, target[:, a], ignore_index=-1) for a, out in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    probe.eval()
    correct = torch.zeros(len(judge_config.attribute_names))
    with torch.no_grad():
        for start in range(0, len(held_images), 128):
            logits = probe(teacher_pixels(from_uint8(held_images[start:start + 128])))
            target = held_labels[start:start + 128]
            correct += torch.stack([(out.argmax(-1) == target[:, a]).float().sum() for a, out in enumerate(logits)])
    out = Path(config.out)
    probe.backbone.save_pretrained(out)
    metrics = {
        "config": asdict(config),
        "train_minutes": (time.perf_counter() - started) / 60,
        "loss_first_last": [sum(losses[:20]) / len(losses[:20]), sum(losses[-20:]) / len(losses[-20:])],
        "held_out_accuracy": {name: float(c) / len(held_images)
                              for name, c in zip(judge_config.attribute_names, correct)},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(config: TeacherTrainConfig) -> None:
    metrics = train_teacher(config)
    print(json.dumps({k: metrics[k] for k in ("train_minutes", "loss_first_last", "held_out_accuracy")}, indent=2))


if __name__ == "__main__":
    main(tyro.cli(TeacherTrainConfig))
