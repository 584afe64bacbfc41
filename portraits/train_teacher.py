"""The alignment teacher's training (`python -m nextscale.portraits.teacher`), plugged into the runtime.

A tiny `Dinov2Model` learns the synthetic portraits' attributes (a linear head per attribute on its
mean patch token, `AttributeProbe`); the backbone alone is saved to `output_dir/model`, a local model
directory that `--alignment.teacher` loads. Like the judge, the portraits are rendered once into a pool
and batches are drawn from it by the runtime's (seedable, resumable) sampler.

Runbook (defaults, one CPU thread): pools about 20 s, 600 steps of 32 portraits about 3 minutes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from nextscale.images import from_uint8
from nextscale.portraits.judge import JudgeConfig, render_portraits
from nextscale.portraits.teacher import AttributeProbe
from nextscale.tokenizer.losses.backbone import ImageNetNormalise
from nextscale.train.errors import run_cli
from nextscale.train.optim import adamw_with_schedule
from nextscale.train.run_config import RunConfig
from nextscale.train.runtime import Runtime, TrainResult, close_process_group


@dataclass(frozen=True)
class TeacherTrainConfig(RunConfig):
    """Train the tiny DINOv2 alignment teacher on the synthetic attributes.

    Writes `output_dir/model` (the backbone: config.json + model.safetensors) and `output_dir/metrics.json`
    (held-out accuracy per attribute).
    """

    output_dir: str = "runs/teacher"
    """Where checkpoints, the saved backbone (`model/`) and its metrics.json go."""
    steps: int = 600
    """Optimiser steps."""
    batch_size: int = 32
    """Portraits per step."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay on matrices."""
    warmup_steps: int = 20
    """Linear warmup steps."""
    decay_fraction: float = 0.2
    """Fraction of steps in the final cosine decay."""
    grad_clip: float = 0.0
    """Clip the global gradient norm (0 disables)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision (the teacher is small: fp32)."""
    eval_images: int = 512
    """Held-out portraits (data seed + 1) for the reported attribute accuracy."""
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
    data_seed: int = 11
    """Synthetic data seed of the training portraits."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.patch_size:
            raise ValueError(f"--image-size {self.image_size} is not a multiple of --patch-size {self.patch_size}")
        if self.train_images < self.batch_size:
            raise ValueError(f"--train-images {self.train_images} is smaller than --batch-size {self.batch_size}")


class TeacherTraining:
    """Cross-entropy per attribute of an `AttributeProbe` on a pool of rendered portraits."""

    name = "teacher"

    def __init__(self, config: TeacherTrainConfig) -> None:
        self.config = config

    def setup(self, runtime: Runtime) -> None:
        config, accelerator = self.config, runtime.accelerator
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.attributes = JudgeConfig()  # only its attribute vocabulary
        self.images, self.labels = render_portraits(config.data_seed, config.train_images, config.image_size,
                                                    self.attributes)
        self.held_out = render_portraits(config.data_seed + 1, config.eval_images, config.image_size, self.attributes)
        self.normalise = ImageNetNormalise()  # the input FrozenBackbone gives the teacher when it aligns
        self.probe = AttributeProbe(config.image_size, config.patch_size, config.hidden_size, config.layers,
                                    config.heads, self.attributes.attribute_values)
        optimizer, scheduler = adamw_with_schedule(self.probe, config.learning_rate, config.weight_decay,
                                                   config.betas, config.steps, config.warmup_steps,
                                                   config.decay_fraction)
        loader = DataLoader(TensorDataset(torch.arange(config.train_images)), batch_size=config.batch_size,
                            shuffle=True, drop_last=True)
        self.module, optimizer, scheduler, runtime.loader = accelerator.prepare(self.probe, optimizer, scheduler,
                                                                                loader)
        runtime.add_part(self.module, optimizer, scheduler)
        self.started = time.perf_counter()

    def micro_step(self, runtime: Runtime, batch: Any, step: int) -> dict[str, torch.Tensor]:
        (indices,) = batch
        indices = indices.cpu()
        pixels = self.normalise(from_uint8(self.images[indices])).to(runtime.device)
        labels = self.labels[indices].to(runtime.device)  # (b, A), -1 where an attribute does not apply
        logits = self.module(pixels)
        loss = sum(F.cross_entropy(out, labels[:, a], ignore_index=-1) for a, out in enumerate(logits))
        runtime.accelerator.backward(loss)
        return {"loss": loss.detach()}

    def after_step(self, runtime: Runtime, step: int, skipped: bool) -> None:
        pass

    @torch.no_grad()
    def finish(self, runtime: Runtime) -> dict:
        train_seconds = time.perf_counter() - self.started
        self.probe.eval()
        images, labels = self.held_out
        correct = torch.zeros(len(self.attributes.attribute_names))
        for start in range(0, len(images), 128):
            logits = self.probe(self.normalise(from_uint8(images[start:start + 128])))
            target = labels[start:start + 128]
            correct += torch.stack([(out.argmax(-1) == target[:, a]).float().sum() for a, out in enumerate(logits)])
        self.probe.backbone.save_pretrained(runtime.output_dir / "model")
        metrics = {"held_out_accuracy": {name: float(c) / len(images)
                                         for name, c in zip(self.attributes.attribute_names, correct)},
                   "train_seconds": round(train_seconds, 1)}
        accuracy = ", ".join(f"{name} {100 * value:.1f}%" for name, value in metrics["held_out_accuracy"].items())
        runtime.accelerator.print(f"held-out attribute accuracy: {accuracy}")
        runtime.accelerator.print(f"saved {runtime.output_dir / 'model'}; metrics in "
                                  f"{runtime.output_dir / 'metrics.json'}")
        return metrics

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        return TrainResult(model=self.probe.backbone, metrics=metrics)


def train_teacher(config: TeacherTrainConfig) -> dict:
    """Render the pools, train, validate; save the backbone to `output_dir/model`; return the metrics."""
    return Runtime(config, TeacherTraining(config)).run().metrics


def cli() -> None:
    """`python -m nextscale.portraits.teacher` (also `accelerate launch -m nextscale.portraits.train_teacher`)."""
    try:
        run_cli(TeacherTrainConfig, train_teacher)
    finally:
        close_process_group()


if __name__ == "__main__":
    cli()
