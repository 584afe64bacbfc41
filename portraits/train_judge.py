"""The judge training (`python -m nextscale.portraits.judge`), plugged into the runtime.

The training images are rendered once into a pool (and `reconstruction_pool` of them reconstructed by
the tokenizer): on a CPU, rendering or encoding + decoding every batch would cost more than the judge's
own step; the augmentations make every pass over the pool different. Batches are drawn from the pool
by the runtime's (seedable, resumable) sampler; reconstructions and augmentations by generators that
are checkpointed with the run.

Runbook (defaults, 1 CPU thread beside another training run): pools 1 min, 1500 steps ~14 min, plus
~5 min to reconstruct 6k images with a tokenizer; 100% per attribute on 2048 held-out renders.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, TensorDataset

from nextscale.images import from_uint8
from nextscale.portraits.attributes import ATTRIBUTES, ZOOM_LEVELS, visible_attributes
from nextscale.portraits.concepts import CONCEPTS, check_concepts
from nextscale.portraits.judge import (
    AttributeJudge,
    AugmentationConfig,
    JudgeConfig,
    attribute_loss,
    augment,
    format_judge_metrics,
    reconstruct,
    render_portraits,
    validate,
    with_concept_heads,
)
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.errors import run_cli
from nextscale.train.optim import adamw_with_schedule
from nextscale.train.run_config import RunConfig
from nextscale.train.runtime import Runtime, TrainResult, close_process_group
from nextscale.train.state import GeneratorState


@dataclass(frozen=True)
class JudgeTrainConfig(RunConfig):
    """Train the attribute judge on synthetic portraits and check a tokenizer with it.

    Writes `output_dir/model` (config.json + model.safetensors) and `output_dir/metrics.json`.
    """

    output_dir: str = "runs/judge"
    """Where checkpoints, the saved judge (`model/`) and its metrics.json go."""
    steps: int = 1500
    """Optimiser steps (docs/experiments/judge-and-tokenizer-check.md has the held-out accuracy they reach)."""
    batch_size: int = 64
    """Images per step."""
    learning_rate: float = 2e-3
    """Peak AdamW learning rate (warmup, plateau, cosine decay over the last half)."""
    weight_decay: float = 0.05
    """AdamW weight decay on conv and linear weights."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    decay_fraction: float = 0.5
    """Fraction of steps in the final cosine decay."""
    grad_clip: float = 0.0
    """Clip the global gradient norm (0 disables)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision (the judge is small: fp32)."""
    log_every: int = 50
    """Steps between logged losses (the points of `loss_curve`)."""
    checkpoint_every: int = 500
    """Steps between training-state checkpoints."""
    eval_images: int = 2048
    """Held-out portraits for the validation metrics."""
    tokenizer: str | None = None
    """Trained tokenizer directory: train on its reconstructions too and report the tokenizer check."""
    model: JudgeConfig = field(default_factory=JudgeConfig)
    """Judge architecture."""
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    """Training-time degradations."""
    train_pool: int = 20_000
    """Rendered training portraits (augmented afresh at every step)."""
    reconstruction_pool: int = 4096
    """Training portraits also reconstructed by the tokenizer (ignored without a tokenizer)."""
    reconstruction_fraction: float = 0.4
    """Fraction of each batch drawn from the reconstructions (ignored without a tokenizer)."""
    train_seed: int = 2
    """Synthetic seed of the training renders (0 trains the other models; 1 and 1_000_003 are held out)."""
    validation_seed: int = 1
    """Synthetic seed of the held-out renders."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    zoom_levels: tuple[int, ...] = (1,)
    """Zoom levels (1, 2, 4) of the training renders, drawn per portrait; every attribute is trained and
    validated only at the levels where it is visible (`visible_attributes`)."""
    concepts: tuple[str, ...] = ()
    """New concepts to read too (`nextscale.portraits.concepts`, e.g. hat): one more head each, trained and
    validated on renders where each portrait carries each concept with probability 1/2."""
    init_from: str | None = None
    """Start from the weights of a saved judge (e.g. checkpoints/demo/judge) of the same architecture."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.zoom_levels or any(level not in ZOOM_LEVELS for level in self.zoom_levels):
            raise ValueError(f"zoom_levels must be a non-empty tuple of {ZOOM_LEVELS}, got {self.zoom_levels}")
        if not 0.0 <= self.reconstruction_fraction < 1.0:
            raise ValueError(f"reconstruction_fraction must be in [0, 1), got {self.reconstruction_fraction}")
        if self.batch_size < 2:
            raise ValueError("need batch_size >= 2 (batch norm)")
        if self.train_pool < self.batch_size:
            raise ValueError(f"--train-pool {self.train_pool} is smaller than --batch-size {self.batch_size}")
        check_concepts(self.concepts)
        if any({**ATTRIBUTES, **CONCEPTS}.get(name) != values for name, values in
               zip(self.model.attribute_names, self.model.attribute_values)):
            raise ValueError("the judge trains on the synthetic portraits: its attributes must come from ATTRIBUTES")


class JudgeTraining:
    """Cross-entropy per attribute on augmented renders (and tokenizer reconstructions).

    Run state beyond Accelerate's: the generator of the augmentations and reconstruction draws.
    """

    name = "judge"

    def __init__(self, config: JudgeTrainConfig) -> None:
        self.config = config

    def setup(self, runtime: Runtime) -> None:
        config, accelerator = self.config, runtime.accelerator
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        start = time.perf_counter()
        size = config.model.image_size
        self.tokenizer = None
        if config.tokenizer is not None:
            self.tokenizer = MultiScaleVQVAE.from_pretrained(config.tokenizer)
            if self.tokenizer.config.image_size != size:
                raise ValueError(f"the tokenizer works at {self.tokenizer.config.image_size} px, the judge at {size} "
                                 "px: set --model.image-size to match")
        model_config = with_concept_heads(config.model, config.concepts)
        self.images, self.labels = render_portraits(config.train_seed, config.train_pool, size, model_config,
                                                    config.num_workers, config.zoom_levels, config.concepts)
        self.validation = {level: render_portraits(config.validation_seed, config.eval_images, size, model_config,
                                                   config.num_workers, (level,), config.concepts)
                           for level in sorted(set(config.zoom_levels))}
        self.reconstructions = self.images[:0]
        self.reconstructed_per_batch = 0
        if self.tokenizer is not None and config.reconstruction_fraction > 0:
            self.reconstructions = reconstruct(self.tokenizer, self.images[:min(config.reconstruction_pool,
                                                                                 config.train_pool)])
            self.reconstructed_per_batch = round(config.batch_size * config.reconstruction_fraction)
        self.render_seconds = time.perf_counter() - start
        self.judge = AttributeJudge(model_config)
        if config.init_from is not None:
            initial = AttributeJudge.from_pretrained(config.init_from)
            if initial.config != model_config:
                raise ValueError(f"{config.init_from} is a judge of another architecture: {initial.config}")
            self.judge.load_state_dict(initial.state_dict())
        optimizer, scheduler = adamw_with_schedule(self.judge, config.learning_rate, config.weight_decay,
                                                   config.betas, config.steps, config.warmup_steps,
                                                   config.decay_fraction)
        real = config.batch_size - self.reconstructed_per_batch
        loader = DataLoader(TensorDataset(torch.arange(config.train_pool)), batch_size=real, shuffle=True,
                            drop_last=True)
        self.module, optimizer, scheduler, runtime.loader = accelerator.prepare(self.judge, optimizer, scheduler,
                                                                                loader)
        runtime.add_part(self.module, optimizer, scheduler)
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + accelerator.process_index)
        runtime.register("augmentation", GeneratorState(self.generator))
        self.started = time.perf_counter()

    def micro_step(self, runtime: Runtime, batch: Any, step: int) -> dict[str, torch.Tensor]:
        config = self.config
        (indices,) = batch
        indices = indices.cpu()
        images, labels = self.images[indices], self.labels[indices]  # (b, 3, H, W) uint8, (b, A)
        if self.reconstructed_per_batch:
            chosen = torch.randint(len(self.reconstructions), (self.reconstructed_per_batch,),
                                   generator=self.generator)
            images = torch.cat([images, self.reconstructions[chosen]])
            labels = torch.cat([labels, self.labels[chosen]])
        inputs = augment(from_uint8(images), config.augmentation, self.generator).to(runtime.device)
        logits = self.module(inputs)
        labels = labels.to(runtime.device)
        names = self.judge.config.attribute_names
        loss = attribute_loss(logits, labels, names)
        runtime.accelerator.backward(loss)
        return {"loss": loss.detach()}

    def after_step(self, runtime: Runtime, step: int, skipped: bool) -> None:
        pass

    def finish(self, runtime: Runtime) -> dict:
        config = self.config
        train_seconds = time.perf_counter() - self.started
        start = time.perf_counter()
        levels = {level: validate(self.judge, images, labels, self.tokenizer,
                                  (*visible_attributes(level), *(config.concepts if level == 1 else ())))
                  for level, (images, labels) in self.validation.items()}
        metrics = dict(levels[min(levels)])  # the lowest level's metrics at the top, as without zoom
        if len(levels) > 1:
            metrics["levels"] = {str(level): level_metrics for level, level_metrics in levels.items()}
        metrics.update(zoom_levels=list(config.zoom_levels), init_from=config.init_from,
                       train_seed=config.train_seed, validation_seed=config.validation_seed, steps=config.steps,
                       tokenizer=config.tokenizer, render_seconds=round(self.render_seconds, 1),
                       train_seconds=round(train_seconds, 1),
                       validation_seconds=round(time.perf_counter() - start, 1))
        self.judge.eval().save_pretrained(runtime.output_dir / "model")
        runtime.accelerator.print(format_judge_metrics(metrics))
        runtime.accelerator.print(f"saved {runtime.output_dir / 'model'}; metrics in "
                                  f"{runtime.output_dir / 'metrics.json'}")
        return metrics

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        return TrainResult(model=self.judge, metrics=metrics)


def train_judge(config: JudgeTrainConfig) -> tuple[AttributeJudge, dict]:
    """Render the pools, train, validate; save the judge to `output_dir/model` and metrics.json."""
    result = Runtime(config, JudgeTraining(config)).run()
    return result.model, result.metrics


def cli() -> None:
    """`python -m nextscale.portraits.judge` (also `accelerate launch -m nextscale.portraits.train_judge`)."""
    try:
        run_cli(JudgeTrainConfig, train_judge)
    finally:
        close_process_group()


if __name__ == "__main__":
    cli()
