"""The next-scale transformer training (run by `accelerate launch train_var.py`), plugged into the runtime."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from nextscale.data import DataConfig, HeldOutConfig, loader_over
from nextscale.data.split import evaluation_split
from nextscale.sampling.pipeline import write_pipeline
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.checkpointing import checkpoint_transformer
from nextscale.train.distributed import full_state_dict, is_fsdp
from nextscale.train.errors import run_cli
from nextscale.train.lora import LoraOptions, attach_training_adapter, check_lora_run
from nextscale.train.optim import adamw_with_schedule
from nextscale.train.presets import check_tokenizer_size
from nextscale.train.preview import PreviewConfig, preview_prompts, recommended_sampling, write_preview
from nextscale.train.processes import main_process_first
from nextscale.train.run_config import RunConfig
from nextscale.train.runtime import Runtime, TrainResult, close_process_group
from nextscale.train.state import GeneratorState, load_initial_weights
from nextscale.train.var_data import (
    CachedCodesDataset,
    build_cache,
    on_the_fly_batches,
    on_the_fly_class_batches,
)
from nextscale.train.var_objective import (
    VarObjective,
    drop_condition,
    drop_labels,
    evaluate_held_out,
    format_var_metrics,
    matched_model_config,
    per_scale_metrics,
    text_to,
)
from nextscale.transformer import NextScaleTransformer, PerScaleTexts, TransformerConfig
from nextscale.transformer.text import OFFLINE_TEXT_ENCODER, TextEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VarTrainConfig(RunConfig):
    """Train the next-scale transformer on a trained tokenizer's codes. With no options: the offline demo
    preset: after `train_tokenizer.py`, it encodes 24,000 synthetic portraits and their captions once, trains
    600 steps of 64 and writes runs/var/{model,pipeline,previews,metrics.json}; `python sample.py --checkpoint
    runs/var/pipeline --prompt "..."` samples from it. What it reaches and how long it takes:
    docs/experiments/transformer-demo-preset.md.
    """

    RECIPE_SECTION: ClassVar[str] = "var"
    """The section of a recipe (--config FILE) this training reads (`nextscale.train.presets`)."""
    HELP_FIRST: ClassVar[tuple[str, ...]] = (
        "tokenizer", "data.source", "data.path", "condition", "text_encoder", "output_dir", "steps", "batch_size",
        "learning_rate", "model.depth", "model.width", "model.num_heads", "eval_data.path", "init_from", "resume",
        "mixed_precision",
    )
    """The options --help lists first, in this order (`nextscale.cli_help`)."""
    HELP_COLLAPSED: ClassVar[tuple[str, ...]] = ("data", "eval_data", "preview", "preview.sampling")
    """The option groups --help lists by name and default only (-H describes each)."""

    output_dir: str = "runs/var"
    """Where checkpoints, previews, the exported model and the sampling pipeline go."""
    steps: int = 600
    """Optimiser steps."""
    batch_size: int = 64
    """Sequences per process per micro-batch (gradient accumulation multiplies it)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay on matrices (never on norms, biases, embeddings)."""
    decay_fraction: float = 0.25
    """Fraction of steps in the final cosine decay (warmup-stable-decay)."""
    grad_clip: float = 2.0
    """Clip the global gradient norm (0 disables)."""
    eval_images: int = 1024
    """Held-out images for the final per-scale loss and accuracy."""
    tokenizer: str = "runs/tokenizer/model"
    """Trained tokenizer: a directory written by train_tokenizer.py, or a hub id."""
    condition: Literal["text", "class"] = "text"
    """text: captions through the text encoder; class: the label of each image's class sub-folder
    (`--data.source class-folder`, the ImageNet layout), a class-conditional model (null class for
    guidance, no cross-attention, codes encoded on the fly)."""
    text_encoder: str = OFFLINE_TEXT_ENCODER
    """Text encoder: hub id or directory (e.g. openai/clip-vit-large-patch14), or the packaged offline MiniLM."""
    text_max_length: int | None = None
    """Text tokens per prompt (None: the encoder's default, 32 for the offline MiniLM)."""
    model: TransformerConfig = field(default_factory=lambda: TransformerConfig.preset("demo"))
    """Transformer shape; scale_sizes, vocab_size, latent_dim and text_width are taken from the tokenizer
    and the text encoder."""
    data: DataConfig = field(default_factory=DataConfig)
    """Captioned training images (synthetic portraits by default); their size is the tokenizer's."""
    eval_data: HeldOutConfig = field(default_factory=HeldOutConfig)
    """Held-out captioned images (--eval-data.path DIR), read like --data; by default a part of --data that is
    never trained on. Named in metrics.json (held_out_source)."""
    cache: bool = True
    """Precompute codes and text embeddings of `cache_images` items once; False encodes every batch."""
    cache_images: int = 24_000
    """How many training items to encode into the cache (all of them when the data holds fewer)."""
    cache_dir: str | None = None
    """Cache location (default: output_dir/cache); reused when tokenizer, data and encoder match."""
    cond_drop: float = 0.1
    """Probability of replacing a caption by the empty prompt (classifier-free guidance training)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy."""
    mixing: float = 0.0
    """Mixing regularisation for per-scale prompts (StyleGAN's style mixing, on captions): the probability
    that an item's scales from a random switch scale on are conditioned on its detail caption, which names
    its fine attributes and states coarse ones (background, hair colour, skin) wrongly, so the fine scales
    learn to keep what the coarse codes decided. Needs the cache and a source whose items carry attributes
    (the synthetic portraits); the cache then holds a detail caption per item."""
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    """Sample grids during training with the project's sampler (previews/step_N.png), from captions of the run's
    held-out data unless --preview.prompts names the prompts; the pipeline records their sampling settings."""
    lora: LoraOptions = field(default_factory=LoraOptions)
    """--lora.rank N: train a LoRA adapter on the frozen --init-from model instead of the whole transformer; the
    run exports output_dir/adapter (`sample.py --adapter`) instead of a model and a pipeline."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """How the processes of `accelerate launch` share the transformer: ddp keeps all of it on each one; fsdp
    shards its weights, gradients and optimiser states over them (FSDP2, one unit per block; the export
    gathers them). train/distributed.py; docs/scale-out.md."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eval_data.resolve(self.data)  # a held-out source without its path fails here, not after training
        check_lora_run(self.lora, self.init_from)
        if self.distributed == "fsdp" and self.lora.enabled:
            raise ValueError("--distributed fsdp shards the whole transformer; a LoRA adapter (--lora.rank) trains "
                             "with --distributed ddp")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ValueError(f"--cond-drop is a probability in [0, 1), got {self.cond_drop}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.mixing <= 1.0:
            raise ValueError(f"--mixing is a probability in [0, 1], got {self.mixing}")
        if self.mixing and (not self.cache or self.condition != "text"):
            raise ValueError("--mixing trains on the cached detail captions of a text model: drop --no-cache "
                             "and --condition class, or use --mixing 0")
        if self.cache_images < 1:
            raise ValueError(f"--cache-images must be >= 1, got {self.cache_images}")
        if self.condition == "class" and self.data.source != "class-folder":
            raise ValueError("--condition class needs class labels: use --data.source class-folder --data.path DIR "
                             "(one sub-folder per class)")


class VarTraining:
    """Teacher-forced next-scale prediction with condition dropout (captions or class labels).

    Run state beyond Accelerate's: the generator of the condition dropout and of mixing (one per process).
    """

    name = "var"

    def __init__(self, config: VarTrainConfig) -> None:
        self.config = config
        self.gathered: NextScaleTransformer | None = None
        """Under FSDP, on the main process: a plain copy with the full weights, made for previews and the export."""

    def setup(self, runtime: Runtime) -> None:
        config, accelerator = self.config, runtime.accelerator
        device = accelerator.device
        self.tokenizer = tokenizer = MultiScaleVQVAE.from_pretrained(config.tokenizer, map_location=device)
        check_tokenizer_size(config.data, tokenizer.config.image_size)
        self.split = runtime.split = evaluation_split(config.data, config.eval_data.resolve(config.data))
        self.text_encoder: TextEncoder | None = None
        self.null_text: dict[str, torch.Tensor] = {}
        if config.condition == "class":
            source = getattr(self.split.train, "dataset", self.split.train)
            self.model_config = matched_model_config(config, tokenizer, None, source.num_classes)
        else:
            self.text_encoder = TextEncoder.from_pretrained(config.text_encoder, max_length=config.text_max_length,
                                                            device=device)
            self.null_text = self.text_encoder.encode([""]).as_dict()
            self.model_config = matched_model_config(config, tokenizer, self.text_encoder.width)
        if config.mixing and self.model_config.num_scales < 2:
            raise ValueError("--mixing switches captions between scales: the tokenizer needs at least two scales")
        if self.model_config.layout_context and not config.mixing:
            logger.warning("--model.layout-context learns its detail marker from mixed items only: with --mixing 0 "
                           "the marker is not trained")
        self.model = NextScaleTransformer(self.model_config)
        if config.init_from:
            load_initial_weights(self.model, config.init_from)
        self.adapter = attach_training_adapter(self.model, config.lora, config.init_from) if config.lora.enabled \
            else None
        if config.activation_checkpointing:
            checkpoint_transformer(self.model)
        accelerator.print(f"transformer: {self.model.num_parameters() / 1e6:.1f}M parameters, "
                          f"{self.model_config.num_tokens} tokens per image")
        runtime.source = self.split.train
        if self.split.evaluation is None:
            logger.warning("no held-out data (%s): the run reports no held-out metrics", self.split.description)
        self.preview_prompts = self.choose_preview_prompts(runtime)
        self.cached = config.cache and self.text_encoder is not None  # class models encode on the fly
        if self.cached:
            cache_dir = Path(config.cache_dir or runtime.output_dir / "cache")
            with main_process_first(accelerator):  # however long the main process takes to build it
                build_cache(cache_dir, tokenizer, config.tokenizer, self.text_encoder, config.data, self.split.train,
                            config.cache_images, progress=accelerator.is_local_main_process,
                            mixing=config.mixing > 0)
            loader = torch.utils.data.DataLoader(CachedCodesDataset(cache_dir), batch_size=config.batch_size,
                                                 shuffle=True, drop_last=True, num_workers=config.num_workers)
        else:
            loader = loader_over(self.split.train, batch_size=config.batch_size, shuffle=True,
                                 num_workers=config.num_workers, drop_last=True)
        objective = VarObjective(self.model, tokenizer, config.label_smoothing)
        optimizer, scheduler = adamw_with_schedule(self.model, config.learning_rate, config.weight_decay,
                                                   config.betas, config.steps, config.warmup_steps,
                                                   config.decay_fraction)
        self.objective, optimizer, scheduler, runtime.loader = accelerator.prepare(objective, optimizer, scheduler,
                                                                                   loader)
        runtime.add_part(self.objective, optimizer, scheduler)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed * 1000 + accelerator.process_index)
        runtime.register("condition_dropout", GeneratorState(self.generator))

    def choose_preview_prompts(self, runtime: Runtime) -> tuple[str, ...]:
        """The previews' prompts (`preview_prompts`: the run's own captions by default), said in one line."""
        preview = self.config.preview
        if not preview.every or self.text_encoder is None:
            return ()
        prompts, where = preview_prompts(preview, self.split.evaluation, self.split.train)
        runtime.accelerator.print(f"previews every {preview.every} steps, {len(prompts)} prompt"
                                  f"{'s' if len(prompts) > 1 else ''} ({where}): "
                                  + " | ".join(repr(prompt) for prompt in prompts))
        return prompts

    def micro_step(self, runtime: Runtime, batch: Any, step: int) -> dict[str, torch.Tensor]:
        device, config = runtime.device, self.config
        if self.text_encoder is None:
            batch = next(on_the_fly_class_batches([batch], self.tokenizer))
            labels = drop_labels(batch["labels"].to(device), self.model_config.null_class, config.cond_drop,
                                 self.generator)
            condition = {"labels": labels}
        else:
            if not self.cached:
                batch = next(on_the_fly_batches([batch], self.tokenizer, self.text_encoder))
            condition, dropped = drop_condition(text_to(batch, device), self.null_text, config.cond_drop,
                                                self.generator)
            if config.mixing:
                condition = self.mixed(condition, batch, dropped, device)
        codes = batch["codes"].to(device).long()
        loss, logits = self.objective(codes, condition)
        runtime.accelerator.backward(loss)
        self.last = (logits.detach(), codes)
        return {"loss": loss.detach()}

    def mixed(self, condition: dict, batch: dict, dropped: torch.Tensor, device: torch.device) -> dict:
        """The condition of a pass with per-scale texts (`NextScaleTransformer.forward`): each item not
        dropped to the empty prompt switches to its detail caption with probability `mixing`, from a scale
        drawn uniformly in 1 .. K-1 on; the others keep their caption at every scale. A `layout_context`
        model sees a layout text beside the detail caption after a switch: there it gets the item's layout
        caption (coarse attributes right, detail ones wrong), so it learns to take the coarse attributes
        from the layout prompt and the detail ones from the detail prompt, while the scales before the
        switch keep the item's own caption, as in training without mixing."""
        num_scales = self.model_config.num_scales
        switch = torch.randint(1, num_scales, (len(dropped),), generator=self.generator)
        chosen = torch.rand(len(dropped), generator=self.generator) < self.config.mixing
        switch = torch.where(chosen & ~dropped.cpu(), switch, torch.full_like(switch, num_scales))
        after = (torch.arange(num_scales) >= switch.unsqueeze(1)).long()  # (b, K): 1 after the switch
        detail = text_to(batch, device, prefix="detail_")
        if not self.model_config.layout_context:
            return {**condition, "per_scale": PerScaleTexts([detail], after.to(device))}
        layout = text_to(batch, device, prefix="layout_")
        layout_text = torch.ones(len(dropped), dtype=torch.long, device=device)  # the layout caption, text 1
        return {**condition, "per_scale": PerScaleTexts([layout, detail], (2 * after).to(device), layout_text)}

    def extra_logs(self, reduced: dict[str, float]) -> dict[str, float]:
        logits, codes = self.last
        return per_scale_metrics(logits, codes, self.model_config.scale_sizes)

    def main_work_at(self, step: int) -> bool:
        """Whether the main process works alone after `step` (a preview): the others wait for it."""
        every = self.config.preview.every
        return bool(every) and ((step + 1) % every == 0 or step + 1 == self.config.steps)

    def after_step(self, runtime: Runtime, step: int, skipped: bool) -> None:
        preview, last = self.main_work_at(step), step + 1 == self.config.steps
        if is_fsdp(runtime.accelerator) and (preview or last):  # a collective: every process gathers
            self.gathered = self.gather(runtime)
        if runtime.accelerator.is_main_process and preview:
            path = write_preview(self.config.preview, self.preview_prompts, self.tokenizer, self.trained,
                                 self.text_encoder,
                                 runtime.output_dir / "previews" / f"step_{step + 1:06d}.png")
            runtime.accelerator.print(f"preview: {path}")

    def gather(self, runtime: Runtime) -> NextScaleTransformer | None:
        """Under FSDP: the full weights in a plain transformer on the main process (None on the others)."""
        state = full_state_dict(runtime.accelerator, self.objective, "model.")
        if not runtime.accelerator.is_main_process:
            return None
        model = NextScaleTransformer(self.model_config).to(runtime.device)
        model.load_state_dict(state)
        return model

    @property
    def trained(self) -> NextScaleTransformer:
        """The transformer with every weight: the trained module, or under FSDP its gathered copy."""
        return self.gathered if self.gathered is not None else self.model

    def finish(self, runtime: Runtime) -> dict:
        config, output_dir = self.config, runtime.output_dir
        self.model = self.trained.eval()
        metrics: dict = {"held_out_source": self.split.description, "parameters": self.model.num_parameters()}
        if self.adapter is not None:
            metrics.update(self.adapter.export(self.model, output_dir,
                                               {"sampling": recommended_sampling(config.preview)}))
        else:
            self.export(output_dir)
        if self.split.evaluation is not None:
            metrics.update(evaluate_held_out(self.model, self.tokenizer, self.text_encoder, self.split.evaluation,
                                             config.eval_images))
            runtime.accelerator.print(format_var_metrics(metrics, self.model_config.num_scales))
        exported = output_dir / ("adapter" if self.adapter is not None else "pipeline")
        runtime.accelerator.print(f"exported {exported}; metrics in {output_dir / 'metrics.json'}")
        return metrics

    def export(self, output_dir: Path) -> None:
        """Save the whole model and its sampling pipeline."""
        config = self.config
        self.model.save_pretrained(output_dir / "model")
        if self.text_encoder is None:
            write_pipeline(output_dir / "pipeline", self.tokenizer, self.model, None, None,
                           sampling=recommended_sampling(config.preview))
        else:
            write_pipeline(output_dir / "pipeline", self.tokenizer, self.model, config.text_encoder,
                           self.text_encoder.max_length, sampling=recommended_sampling(config.preview))

    def result(self, runtime: Runtime, metrics: dict) -> TrainResult:
        return TrainResult(model=self.model, metrics=metrics)


def train_var(config: VarTrainConfig) -> TrainResult:
    """Train, export `output_dir/model` and a sampling pipeline `output_dir/pipeline`; return metrics."""
    return Runtime(config, VarTraining(config)).run()


def cli() -> None:
    """The `nextscale-train-var` console script (also `accelerate launch train_var.py`)."""
    try:
        run_cli(VarTrainConfig, train_var)
    finally:
        close_process_group()


if __name__ == "__main__":
    cli()
