"""The tokenizer training (run by `accelerate launch train_tokenizer.py`), plugged into the runtime."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from nextscale.data import DataConfig, HeldOutConfig, first_batch, loader_over
from nextscale.data.split import EvaluationSplit, evaluation_split
from nextscale.eval.tokenizer import evaluate_tokenizer, format_tokenizer_metrics
from nextscale.images import save_grid
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.tokenizer.losses.alignment import (
    AlignmentConfig,
    AlignmentHead,
    FrozenVisionTeacher,
    feature_pyramid,
)
from nextscale.tokenizer.losses.discriminator import AdversarialConfig
from nextscale.tokenizer.losses.perceptual import PerceptualConfig, PerceptualLoss
from nextscale.train.checkpointing import checkpoint_tokenizer
from nextscale.train.errors import run_cli
from nextscale.train.optim import adamw_with_schedule
from nextscale.train.presets import DEMO_TEACHER, default_alignment, demo_alignment, is_demo_data
from nextscale.train.run_config import RunConfig
from nextscale.train.runtime import Runtime, TrainResult, close_process_group
from nextscale.train.state import GeneratorState, TensorState, load_initial_weights
from nextscale.train.tokenizer_objective import (
    Adversary,
    TokenizerObjective,
    WeightEMA,
    add_optional_terms,
    prepare_teacher_cache,
    restart_dead_codes,
)


def alignment_follows_data(cls: type) -> type:
    """Give `cls.__init__` the resolver's alignment default (`nextscale.train.presets.default_alignment`) when
    no alignment is passed: the demo preset's for the demo's data, off for any other, so a config built in
    Python gets what the command line does. Nothing is changed after the instance is built."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "alignment" not in kwargs and not args:
            data = kwargs.get("data", DataConfig())
            kwargs["alignment"] = default_alignment(data.source, data.image_size)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@alignment_follows_data
@dataclass(frozen=True)
class TokenizerTrainConfig(RunConfig):
    """Train the multi-scale VQ tokenizer. With no options: the offline demo preset (synthetic 64 px portraits,
    the last scale aligned with the bundled teacher at weight 0.1), 1200 steps of 32 images into
    runs/tokenizer/{model,metrics.json,samples}; what it reaches and how long it takes:
    docs/experiments/tokenizer-demo-preset.md.
    """

    RECIPE_SECTION: ClassVar[str] = "tokenizer"
    """The section of a recipe (--config FILE) this training reads (`nextscale.train.presets`)."""
    HELP_FIRST: ClassVar[tuple[str, ...]] = (
        "image_size", "data.source", "data.path", "output_dir", "steps", "batch_size", "learning_rate",
        "alignment.teacher", "perceptual.model", "adversarial.weight", "eval_data.path", "init_from", "resume",
        "mixed_precision",
    )
    """The options --help lists first, in this order (`nextscale.cli_help`)."""
    HELP_COLLAPSED: ClassVar[tuple[str, ...]] = ("data", "eval_data", "alignment", "perceptual", "adversarial")
    """The option groups --help lists by name and default only (-H describes each)."""

    output_dir: str = "runs/tokenizer"
    """Where checkpoints, sample grids, the exported model (`model/`) and `metrics.json` go."""
    steps: int = 1200
    """Optimiser steps."""
    image_size: int | None = None
    """Side of the training images in px, given once: sets --data.image-size and --model.image-size and picks
    the size preset (--model.channel-mult, --model.scale-sizes): 32, 64 (the demo), 128, 256 (VAR's 10
    scales) or 512 px, other sizes derived; --model.* options override it."""
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer architecture (from --image-size's preset when given)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data (synthetic portraits by default; an image folder or WebDataset shards)."""
    eval_data: HeldOutConfig = field(default_factory=HeldOutConfig)
    """Held-out images (--eval-data.path DIR), read like --data; by default a part of --data that is never
    trained on (the transformer training holds out the same way). Named in metrics.json."""
    alignment: AlignmentConfig = field(default_factory=demo_alignment)
    """Representation alignment. The demo preset (the synthetic portraits at 64 px) aligns its last scale with
    the bundled teacher at weight 0.1; with other data (--data.source) or sizes (--image-size) it is off until
    --alignment.teacher names a teacher (facebook/dinov2-base, or a local directory), with DINOv2's settings."""
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    """Perceptual loss through a frozen vision backbone; off until --perceptual.model names one."""
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    """PatchGAN adversarial loss; off until --adversarial.weight is positive."""
    l1_weight: float = 0.2
    """Weight of the L1 reconstruction loss."""
    l2_weight: float = 1.0
    """Weight of the L2 reconstruction loss."""
    quantization_weight: float = 1.0
    """Weight of the quantisation (codebook + commitment) loss."""
    ema_decay: float = 0.0
    """Decay of an exponential moving average of the weights, exported instead of the raw ones (0: off)."""
    sample_every: int = 500
    """Steps between reconstruction grids (held-out originals over reconstructions) in samples/."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eval_data.resolve(self.data)  # a held-out source without its path fails here, not after training
        if self.image_size is not None and {self.data.image_size, self.model.image_size} != {self.image_size}:
            raise ValueError(f"--image-size {self.image_size} sets the data and model sizes: drop --data.image-size "
                             "and --model.image-size")
        if self.data.image_size != self.model.image_size:
            raise ValueError(f"--data.image-size {self.data.image_size} differs from --model.image-size "
                             f"{self.model.image_size}: pass --image-size N alone instead of both")
        if self.alignment.teacher == str(DEMO_TEACHER) and not is_demo_data(self.data.source, self.data.image_size):
            raise ValueError(f"the demo's alignment teacher knows only the synthetic portraits at "
                             f"{DataConfig.image_size} px, not --data.source {self.data.source} at "
                             f"{self.data.image_size} px: pass --alignment.teacher none, or a teacher for your "
                             "images (e.g. facebook/dinov2-base)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.sample_every < 1:
            raise ValueError(f"--sample-every must be >= 1, got {self.sample_every}")


class TokenizerTraining:
    """Reconstruction + quantisation (+ alignment, perceptual, adversarial) of the multi-scale VQ tokenizer.

    Run state beyond Accelerate's: the weight EMA, the codebook usage that drives dead-code restarts and
    the generator that draws the restarted codes.
    """

    name = "tokenizer"
    progress_keys = ("psnr", "quantization")
    """Shown beside the loss on the progress bar: the reconstruction's PSNR, and the quantisation term, which
    rises during warm-up while the reconstruction improves (`loss_terms_note`)."""

    def __init__(self, config: TokenizerTrainConfig) -> None:
        self.config = config
        self.adversary: Adversary | None = None
        self.ema: WeightEMA | None = None

    def setup(self, runtime: Runtime) -> None:
        config, accelerator = self.config, runtime.accelerator
        self.model = model = MultiScaleVQVAE(config.model)
        if config.init_from:
            load_initial_weights(model, config.init_from)
        if config.activation_checkpointing:
            checkpoint_tokenizer(model)
        self.teacher = head = None
        if config.alignment.enabled:
            self.teacher = FrozenVisionTeacher(config.alignment.teacher, config.alignment.teacher_resolution)
            head = AlignmentHead(config.alignment, config.model.latent_dim, self.teacher.width,
                                 config.model.scale_sizes)
            self.teacher.to(accelerator.device)
        self.cache = prepare_teacher_cache(accelerator, self.teacher, config) if self.teacher is not None else None
        objective = TokenizerObjective(model, head, config)
        optimizer, scheduler = adamw_with_schedule(objective, config.learning_rate, config.weight_decay,
                                                   config.betas, config.steps, config.warmup_steps,
                                                   config.decay_fraction)
        self.split = runtime.split = evaluation_split(config.data, config.eval_data.resolve(config.data))
        loader = loader_over(self.split.train, batch_size=config.batch_size, shuffle=True,
                             num_workers=config.num_workers, drop_last=True)
        self.objective, optimizer, scheduler, runtime.loader = accelerator.prepare(objective, optimizer, scheduler,
                                                                                   loader)
        runtime.add_part(self.objective, optimizer, scheduler)
        self.perceptual = PerceptualLoss(config.perceptual).to(accelerator.device) if config.perceptual.enabled \
            else None
        if config.adversarial.enabled:
            self.adversary = Adversary(accelerator, config)
            runtime.add_part(self.adversary.discriminator, self.adversary.optimizer, self.adversary.scheduler,
                             active=lambda step: step >= config.adversarial.start_step)
        if config.ema_decay > 0:
            self.ema = WeightEMA(model, config.ema_decay)
            runtime.register("ema", self.ema)
        runtime.register("codebook_usage", TensorState(lambda: {"usage_ema": model.quantizer.usage_ema}))
        self.restarts = torch.Generator(device=accelerator.device).manual_seed(config.seed)
        runtime.register("dead_code_restarts", GeneratorState(self.restarts))
        sample_loader = loader_over(self.split.evaluation or self.split.train, batch_size=8, shuffle=False,
                                    drop_last=False)
        self.sample_images = first_batch(sample_loader)["image"].to(accelerator.device)
        accelerator.print(loss_terms_note(config))

    def micro_step(self, runtime: Runtime, batch: Any, step: int) -> dict[str, torch.Tensor]:
        config, accelerator = self.config, runtime.accelerator
        images = batch["image"]
        pyramid = None
        if self.cache is not None:
            pyramid = [level.to(images.device) for level in self.cache.lookup(batch["index"])]
        elif self.teacher is not None:
            pyramid = feature_pyramid(self.teacher(images), config.model.scale_sizes)
        losses = self.objective(images, pyramid)
        reconstruction = losses.pop("reconstruction")
        self.latent = losses.pop("latent")
        # the scales of the latent and of the codes, whose mismatch makes the quantisation term rise in warm-up
        losses["latent_rms"] = self.latent.float().pow(2).mean().sqrt()
        losses["codebook_rms"] = self.model.quantizer.embedding.weight.detach().float().pow(2).mean().sqrt()
        if self.perceptual is not None and step >= config.perceptual.start_step:
            with accelerator.autocast():
                losses["perceptual"] = self.perceptual(reconstruction, images)
        adversarial = self.adversary is not None and step >= config.adversarial.start_step
        if adversarial:
            losses["generator"] = self.adversary.generator_loss(reconstruction)
        add_optional_terms(losses, config, self.model.decoder.out.weight)
        accelerator.backward(losses["loss"])
        if adversarial:
            losses.update(self.adversary.train_step(images, reconstruction.detach()))
        return {key: value.detach() for key, value in losses.items()}

    def main_work_at(self, step: int) -> bool:
        """Whether the main process works alone after `step` (a reconstruction grid): the others wait for it."""
        return (step + 1) % self.config.sample_every == 0 or step + 1 == self.config.steps

    def after_step(self, runtime: Runtime, step: int, skipped: bool) -> None:
        if not skipped:
            restart_dead_codes(runtime.accelerator, self.model, self.latent, self.restarts)
            if self.ema is not None:
                self.ema.update(self.model)
        config = self.config
        for term, start in late_terms(config):
            if step + 1 == start:
                runtime.accelerator.print(f"\nstep {start}: the {term} term joins the loss from step {start + 1} on "
                                          "(the loss jumps there)")
        if runtime.accelerator.is_main_process and ((step + 1) % config.sample_every == 0 or step + 1 == config.steps):
            save_reconstructions(self.model, self.sample_images, runtime.output_dir / "samples" /
                                 f"step_{step + 1:06d}.png")

    @staticmethod
    def extra_logs(reduced: dict[str, float]) -> dict[str, float]:
        return {"psnr": 10 * math.log10(4.0 / max(reduced["l2"], 1e-10)) if math.isfinite(reduced["l2"])
                else float("nan")}

    def final_model(self) -> MultiScaleVQVAE:
        return (self.ema.shadow if self.ema is not None else self.model).float().eval()

    def finish(self, runtime: Runtime) -> dict:
        final = self.final_model()
        final.save_pretrained(runtime.output_dir / "model")
        metrics = evaluate_held_out(final, self.split, self.config.eval_images)
        runtime.accelerator.print(format_tokenizer_metrics(metrics))
        runtime.accelerator.print(f"exported {runtime.output_dir / 'model'}; metrics in "
                                  f"{runtime.output_dir / 'metrics.json'}")
        return metrics

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        extra = ({"discriminator": runtime.accelerator.unwrap_model(self.adversary.discriminator)}
                 if self.adversary is not None else {})
        return TrainResult(model=self.final_model(), metrics=metrics, extra=extra)


def late_terms(config: TokenizerTrainConfig) -> list[tuple[str, int]]:
    """The loss terms that join after the first step: (name, --<name>.start-step) of each."""
    terms = [("perceptual", config.perceptual.start_step if config.perceptual.enabled else 0),
             ("adversarial", config.adversarial.start_step if config.adversarial.enabled else 0)]
    return [(name, start) for name, start in terms if start > 0]


def loss_terms_note(config: TokenizerTrainConfig) -> str:
    """The first lines' account of the loss: its terms with their weights, the step each late term joins at,
    and why the loss can rise during warm-up while the reconstruction improves."""
    terms = [f"{config.l2_weight:g} l2", f"{config.l1_weight:g} l1", f"{config.quantization_weight:g} quantization"]
    if config.alignment.enabled:
        terms.append(f"{config.alignment.weight:g} alignment")
    starts = dict(late_terms(config))
    if config.perceptual.enabled:
        terms.append(f"{config.perceptual.weight:g} perceptual" + (f" from step {starts['perceptual'] + 1}"
                                                                   if "perceptual" in starts else ""))
    if config.adversarial.enabled:
        terms.append(f"{config.adversarial.weight:g} generator" + (f" from step {starts['adversarial'] + 1}"
                                                                   if "adversarial" in starts else ""))
    return ("loss = " + " + ".join(terms) + ". The quantization term is the latent's squared distance to its codes, "
            "in the latent's own units: the codes start near zero and move by about the learning rate per step, the "
            "encoder's latent grows faster, so the term (and the loss) rises during warm-up until the commitment "
            "pulls the latent back (latent_rms, codebook_rms in the logs); psnr, shown beside the loss, follows the "
            "reconstruction.")


def train_tokenizer(config: TokenizerTrainConfig) -> TrainResult:
    """Train, export to `output_dir/model`, evaluate, write `metrics.json`."""
    return Runtime(config, TokenizerTraining(config)).run()


@torch.no_grad()
def save_reconstructions(model: MultiScaleVQVAE, images: torch.Tensor, path: Path) -> None:
    was_training = model.training
    model.eval()
    reconstruction = model.decode(model.encode(images.float()))
    save_grid([images, reconstruction], path)
    model.train(was_training)


def evaluate_held_out(model: MultiScaleVQVAE, split: EvaluationSplit, eval_images: int) -> dict:
    """Reconstruction metrics on the held-out images (the training data itself when there are none, said so)."""
    evaluation = split.evaluation if split.evaluation is not None else split.train
    loader = loader_over(evaluation, batch_size=64, shuffle=False, num_workers=0, drop_last=False)
    needed = math.ceil(eval_images / 64)
    batches = (batch["image"][: eval_images - i * 64] for i, batch in zip(range(needed), loader))
    metrics = evaluate_tokenizer(model, batches)
    metrics["held_out"] = split.evaluation is not None
    metrics["held_out_source"] = split.description if split.evaluation is not None else \
        f"{split.description}; measured on the training data itself"
    return metrics


def cli() -> None:
    """The `nextscale-train-tokenizer` console script (also `accelerate launch train_tokenizer.py`)."""
    try:
        run_cli(TokenizerTrainConfig, train_tokenizer)
    finally:
        close_process_group()


if __name__ == "__main__":
    cli()
