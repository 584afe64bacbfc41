"""A label judge: a small classifier of your own images' classes, trained on the one training runtime.

    python -m nextscale.eval.label_judge --data.source class-folder --data.path DIR --out judge/
    python -m nextscale.eval.label_judge --data.source folder --data.path DIR --label-column label --out judge/

It reads an image's class (a class folder's sub-folder, or a label column of metadata.jsonl:
`nextscale.eval.labels`) and scores prompt adherence of a pipeline trained on that data
(`nextscale.eval.label_adherence`): do samples of a class's prompt show that class as often as held-out
real images do? It trains on the training part of the data and is validated on the held-out part that
every training on the same data holds out. With `--tokenizer` (the pipeline's) a part of every batch is
its reconstructions, so that it reads the class of tokenizer-decoded images (samples among them) as it
reads real ones. Writes `OUT/model` (config.json + model.safetensors, the
class names inside), `OUT/data.json` (the data it was trained on) and `OUT/metrics.json` (held-out
accuracy, overall and per class).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import nn

from nextscale.checkpoint import PretrainedMixin
from nextscale.data import DataConfig, loader_over
from nextscale.eval.labels import LabelledSplit, labelled_split
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.errors import run_cli
from nextscale.train.optim import adamw_with_schedule
from nextscale.train.run_config import RunConfig
from nextscale.train.runtime import Runtime, TrainResult, close_process_group
from nextscale.train.state import GeneratorState, load_initial_weights


@dataclass(frozen=True)
class LabelJudgeConfig:
    """Architecture of `LabelJudge`; it names its classes, so a saved judge is self-describing."""

    image_size: Annotated[int, tyro.conf.Suppress] = 32
    """Side of the square input images, in pixels (other sizes are resized to it); a training sets it to
    --data.image-size."""
    channels: tuple[int, ...] = (32, 64, 128)
    """Width of each conv stage; every stage halves the resolution."""
    feature_dim: int = 128
    """Width of the penultimate features (the Fréchet distance's space)."""
    classes: Annotated[tuple[str, ...], tyro.conf.Suppress] = ("a", "b")
    """The class names, in label order (set from the data, not an option)."""

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"a label judge needs at least two distinct classes, got {self.classes}")
        if self.image_size < 2 ** len(self.channels):
            raise ValueError(f"{len(self.channels)} stages halve {self.image_size} px below 1 px: use fewer "
                             "--model.channels or a larger --model.image-size")


class LabelJudge(nn.Module, PretrainedMixin):
    """Conv trunk (3x3 conv, batch norm, ReLU, max-pool per stage), global average pool, a feature layer and
    one linear head over the classes. Images are (b, 3, H, W) in [-1, 1], resized to `image_size`;
    `from_pretrained` returns an eval-mode judge."""

    config_class = LabelJudgeConfig

    def __init__(self, config: LabelJudgeConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = 3
        for out_channels in config.channels:
            layers += [nn.Conv2d(width, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            width = out_channels
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_layer = nn.Sequential(nn.Linear(width, config.feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(config.feature_dim, len(config.classes))

    def resized(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"the judge reads (b, 3, H, W) images, got {tuple(images.shape)}")
        if images.shape[-2:] == (size, size):
            return images
        return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) -> penultimate features (b, feature_dim)."""
        return self.feature_layer(self.trunk(self.resized(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, 3, H, W) -> class logits (b, classes)."""
        return self.head(self.features(images))

    @torch.no_grad()
    def judge(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted labels (n,) and features (n, feature_dim) of images (n, 3, H, W), in batches."""
        parts = [(self.head(features).argmax(-1), features)
                 for features in (self.features(chunk) for chunk in images.split(batch_size))]
        return torch.cat([p for p, _ in parts]), torch.cat([f for _, f in parts])


def shift(images: torch.Tensor, generator: torch.Generator, fraction: float) -> torch.Tensor:
    """Each image moved by up to `fraction` of its side in x and y (edge pixels repeated): the judge reads the
    class, not its exact place."""
    if fraction <= 0:
        return images
    side = images.shape[-1]
    pad = max(1, round(side * fraction))
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (len(images), 2), generator=generator)
    return torch.stack([padded[i, :, y:y + side, x:x + side] for i, (y, x) in enumerate(offsets.tolist())])


@dataclass(frozen=True)
class LabelJudgeTrainConfig(RunConfig):
    """Train a label judge on the training part of a class folder, or of a folder with a label column."""

    output_dir: Annotated[str, tyro.conf.arg(aliases=("--out",))] = "runs/label_judge"
    """Where the judge (model/), data.json, checkpoints and metrics.json go (--out for short)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The labelled images: --data.source class-folder or folder, --data.path DIR; the judge reads them at
    --data.image-size (samples of another size are resized to it)."""
    label_column: str = "label"
    """The metadata.jsonl field naming each image's class (--data.source folder)."""
    model: LabelJudgeConfig = field(default_factory=LabelJudgeConfig)
    """Judge architecture (its image size is --data.image-size)."""
    steps: int = 600
    """Optimiser steps."""
    batch_size: int = 64
    """Images per step."""
    learning_rate: float = 2e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay on conv and linear weights."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    decay_fraction: float = 0.5
    """Fraction of steps in the final cosine decay."""
    grad_clip: float = 0.0
    """Clip the global gradient norm (0 disables)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision (the judge is small: fp32)."""
    log_every: int = 50
    """Steps between logged losses."""
    checkpoint_every: int = 500
    """Steps between training-state checkpoints."""
    eval_images: int = 4096
    """Held-out images the final accuracy is measured on, at most."""
    max_shift: float = 0.0625
    """Training images are moved by up to this fraction of their side (0: not at all)."""
    tokenizer: str | None = None
    """A trained tokenizer (its model/ directory): a part of every batch is its reconstructions, so that the
    judge reads the class and not the sharpness (samples are decoded by the tokenizer, and blur alike)."""
    reconstruction_fraction: float = 0.4
    """Fraction of each batch replaced by the tokenizer's reconstructions (with --tokenizer)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data.source not in ("class-folder", "folder"):
            raise ValueError("a label judge trains on labelled images: --data.source class-folder (one sub-folder "
                             "per class) or folder (with a label column in metadata.jsonl, --label-column)")
        if self.batch_size < 2:
            raise ValueError("need --batch-size >= 2 (batch norm)")
        if not 0.0 <= self.max_shift < 0.5:
            raise ValueError(f"--max-shift must be in [0, 0.5), got {self.max_shift}")
        if not 0.0 <= self.reconstruction_fraction <= 1.0:
            raise ValueError(f"--reconstruction-fraction must be in [0, 1], got {self.reconstruction_fraction}")


class LabelJudgeTraining:
    """Cross-entropy over the classes on shifted training images. Run state beyond Accelerate's: the
    generator of the shifts."""

    name = "label_judge"

    def __init__(self, config: LabelJudgeTrainConfig) -> None:
        self.config = config

    def setup(self, runtime: Runtime) -> None:
        config, accelerator = self.config, runtime.accelerator
        self.split = labelled_split(config.data, config.label_column)
        if self.split.held_out is None:
            raise ValueError(f"nothing is held out of {config.data.path} ({self.split.description}): the judge's "
                             "accuracy would be measured on its training images; add images")
        self.judge = LabelJudge(dataclasses.replace(config.model, image_size=config.data.image_size,
                                                    classes=self.split.classes))
        if config.init_from:
            load_initial_weights(self.judge, config.init_from)
        counts = torch.bincount(self.split.label_of(torch.tensor(self.split.train.indices)),
                                minlength=len(self.split.classes))
        accelerator.print(f"label judge: {len(self.split.classes)} classes, {len(self.split.train)} training and "
                          f"{len(self.split.held_out)} held-out images ({self.split.description}); training images "
                          f"per class {int(counts.min())}-{int(counts.max())}")
        optimizer, scheduler = adamw_with_schedule(self.judge, config.learning_rate, config.weight_decay,
                                                   config.betas, config.steps, config.warmup_steps,
                                                   config.decay_fraction)
        loader = loader_over(self.split.train, batch_size=config.batch_size, shuffle=True,
                             num_workers=config.num_workers, drop_last=True)
        self.module, optimizer, scheduler, runtime.loader = accelerator.prepare(self.judge, optimizer, scheduler,
                                                                                loader)
        runtime.source = self.split.train
        runtime.add_part(self.module, optimizer, scheduler)
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + accelerator.process_index)
        runtime.register("shifts", GeneratorState(self.generator))
        self.tokenizer = None
        if config.tokenizer is not None:
            self.tokenizer = MultiScaleVQVAE.from_pretrained(config.tokenizer, map_location=accelerator.device)
            if self.tokenizer.config.image_size != config.data.image_size:
                raise ValueError(f"the tokenizer works at {self.tokenizer.config.image_size} px, the judge reads "
                                 f"--data.image-size {config.data.image_size}: pass the tokenizer's size")

    def micro_step(self, runtime: Runtime, batch: Any, step: int) -> dict[str, torch.Tensor]:
        images = batch["image"].to(runtime.device)
        if self.tokenizer is not None:  # the first part of the (shuffled) batch as the tokenizer gives it back
            count = round(len(images) * self.config.reconstruction_fraction)
            with torch.no_grad():
                rebuilt = self.tokenizer.decode(self.tokenizer.encode(images[:count]))
            images = torch.cat([rebuilt, images[count:]])
        images = shift(images.cpu(), self.generator, self.config.max_shift).to(runtime.device)
        labels = self.split.label_of(batch["index"]).to(runtime.device)
        logits = self.module(images)
        loss = F.cross_entropy(logits, labels, ignore_index=-1)  # -1: an unlabelled image read in a bad one's place
        runtime.accelerator.backward(loss)
        hits = (logits.argmax(-1) == labels)[labels >= 0]
        return {"loss": loss.detach(), "accuracy": hits.float().mean().detach()}

    def after_step(self, runtime: Runtime, step: int, skipped: bool) -> None:
        pass

    def finish(self, runtime: Runtime) -> dict:
        config, output_dir = self.config, runtime.output_dir
        self.judge.eval()
        images, labels = held_out_images(self.split, config.eval_images)
        predicted, _ = self.judge.judge(images)
        metrics = {"classes": list(self.split.classes), "held_out_source": self.split.description,
                   "held_out_images": len(labels), **accuracy(predicted, labels, self.split.classes)}
        self.judge.save_pretrained(output_dir / "model")
        (output_dir / "data.json").write_text(json.dumps({"data": dataclasses.asdict(config.data),
                                                          "label_column": config.label_column}, indent=2) + "\n")
        runtime.accelerator.print(f"held-out accuracy {metrics['accuracy']:.3f} on {len(labels)} images "
                                  f"(per class {min(metrics['per_class'].values()):.2f}-"
                                  f"{max(metrics['per_class'].values()):.2f}); saved {output_dir / 'model'}")
        return metrics

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        return TrainResult(model=self.judge, metrics=metrics)


def held_out_images(split: LabelledSplit, limit: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` held-out images (n, 3, H, W) in [-1, 1] and their labels (n,)."""
    assert split.held_out is not None
    images, labels = [], []
    for batch in loader_over(split.held_out, batch_size=batch_size, shuffle=False, drop_last=False):
        images.append(batch["image"])
        labels.append(split.label_of(batch["index"]))
        if sum(len(part) for part in labels) >= limit:
            break
    images_, labels_ = torch.cat(images)[:limit], torch.cat(labels)[:limit]
    known = labels_ >= 0  # an unlabelled image read in a bad one's place is left out
    return images_[known], labels_[known]


def accuracy(predicted: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> dict:
    """Overall accuracy and the accuracy of each class present (the mean over those classes too)."""
    per_class = {name: float((predicted[labels == label] == label).float().mean())
                 for label, name in enumerate(classes) if bool((labels == label).any())}
    return {"accuracy": float((predicted == labels).float().mean()), "per_class": per_class,
            "mean_per_class": sum(per_class.values()) / len(per_class)}


def train_label_judge(config: LabelJudgeTrainConfig) -> TrainResult:
    """Train, validate on the held-out images, save `output_dir/model` and `output_dir/data.json`."""
    return Runtime(config, LabelJudgeTraining(config)).run()


def cli() -> None:
    """`python -m nextscale.eval.label_judge` (also under `accelerate launch -m`)."""
    try:
        run_cli(LabelJudgeTrainConfig, train_label_judge)
    finally:
        close_process_group()


if __name__ == "__main__":
    cli()
