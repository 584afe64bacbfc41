"""The tokenizer's training objective: reconstruction + quantisation (+ alignment, perceptual, adversarial).

`TokenizerObjective` is the one module DDP wraps (tokenizer + alignment head); `Adversary` is the
PatchGAN discriminator with its own optimiser; `WeightEMA` the exported moving average of the weights.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast
from tqdm.auto import tqdm

from nextscale.data import make_dataloader
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.tokenizer.losses.alignment import (
    AlignmentHead,
    FrozenVisionTeacher,
    TeacherFeatureCache,
    precompute_teacher_features,
)
from nextscale.tokenizer.losses.discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
)
from nextscale.train.optim import adamw_with_schedule
from nextscale.train.processes import main_process_first

if TYPE_CHECKING:
    from nextscale.train.tokenizer_loop import TokenizerTrainConfig


class WeightEMA:
    """Exponential moving average of a module's floating-point state (checkpointed as run state)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for ema, live in zip(self.shadow.state_dict().values(), module.state_dict().values()):
            if ema.is_floating_point():
                ema.lerp_(live, 1 - self.decay)
            else:
                ema.copy_(live)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)


class TokenizerObjective(torch.nn.Module):
    """Tokenizer + optional alignment head, returning the training losses (one module for DDP)."""

    def __init__(self, model: MultiScaleVQVAE, head: AlignmentHead | None, config: TokenizerTrainConfig) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.config = config

    def forward(self, images: torch.Tensor, pyramid: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        out = self.model(images)
        reconstruction = out.reconstruction.float()
        losses = {
            "l1": F.l1_loss(reconstruction, images),
            "l2": F.mse_loss(reconstruction, images),
            "quantization": out.quantization_loss,
        }
        config = self.config
        losses["weighted_reconstruction"] = config.l1_weight * losses["l1"] + config.l2_weight * losses["l2"]
        loss = losses["weighted_reconstruction"] + config.quantization_weight * losses["quantization"]
        if self.head is not None and pyramid is not None:
            losses["alignment"], _ = self.head(out.accumulated, out.latent, pyramid)
            loss = loss + config.alignment.weight * losses["alignment"]
        losses["loss"] = loss
        losses["latent"] = out.latent.detach()
        losses["reconstruction"] = reconstruction
        return losses


def add_optional_terms(losses: dict[str, torch.Tensor], config: TokenizerTrainConfig, last_layer: torch.Tensor) -> None:
    """Add the perceptual and adversarial ("generator") terms found in `losses` to its "loss".

    The adversarial term is balanced against the reconstruction (+ perceptual) term, whose gradient at
    the decoder's `last_layer` sets its adaptive weight (logged as "adaptive_weight").
    """
    fidelity = losses.pop("weighted_reconstruction")
    if "perceptual" in losses:
        fidelity = fidelity + config.perceptual.weight * losses["perceptual"]
        losses["loss"] = losses["loss"] + config.perceptual.weight * losses["perceptual"]
    if "generator" in losses:
        weight = config.adversarial.weight
        if config.adversarial.adaptive:
            losses["adaptive_weight"] = adaptive_weight(fidelity, losses["generator"], last_layer)
            weight = weight * losses["adaptive_weight"]
        losses["loss"] = losses["loss"] + weight * losses["generator"]


class Adversary:
    """The PatchGAN discriminator with its own optimiser and schedule, prepared by Accelerate.

    The tokenizer's adversarial loss goes through the unwrapped discriminator with its weights frozen,
    so it sends gradients to the reconstruction only; the discriminator then trains on real and
    (detached) reconstructed images in one batch, one distributed forward per backward. The runtime
    clips and steps it with the tokenizer, from `start_step` on.
    """

    def __init__(self, accelerator: Accelerator, config: TokenizerTrainConfig) -> None:
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError(
                f"--adversarial.weight > 0 runs under DDP or on one device, not {accelerator.distributed_type.value}: "
                "the tokenizer's frozen pass through the discriminator needs its whole weights on every process. "
                "Pick multi-GPU (DDP) in `accelerate config`; the tokenizer is small enough for it."
            )
        self.accelerator = accelerator
        self.config = config.adversarial
        discriminator = PatchDiscriminator(self.config, config.model.image_size, config.model.in_channels)
        optimizer, scheduler = adamw_with_schedule(
            discriminator, self.config.learning_rate or config.learning_rate, 0.0, self.config.betas,
            max(1, config.steps - self.config.start_step), config.warmup_steps, config.decay_fraction)
        self.discriminator, self.optimizer, self.scheduler = accelerator.prepare(discriminator, optimizer, scheduler)

    def generator_loss(self, reconstruction: torch.Tensor) -> torch.Tensor:
        module = self.accelerator.unwrap_model(self.discriminator)
        module.requires_grad_(False)
        try:
            with self.accelerator.autocast():
                logits = module(reconstruction)
        finally:
            module.requires_grad_(True)
        return generator_loss(logits, self.config.loss)

    def train_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch of the discriminator (the runtime steps its optimiser);
        returns its loss and mean logits for logging."""
        logits_real, logits_fake = self.discriminator(torch.cat([real, fake])).float().chunk(2)
        loss = discriminator_loss(logits_real, logits_fake, self.config.loss)
        self.accelerator.backward(loss)
        return {"discriminator": loss.detach(), "logits_real": logits_real.detach().mean(),
                "logits_fake": logits_fake.detach().mean()}


def prepare_teacher_cache(
    accelerator: Accelerator, teacher: FrozenVisionTeacher, config: TokenizerTrainConfig
) -> TeacherFeatureCache | None:
    """With --alignment.cache-dir: build the teacher-feature cache once (main process), then load it."""
    directory = config.alignment.cache_dir
    if directory is None:
        return None
    if config.data.random_crop:
        raise ValueError("teacher features are cached per image and crop: drop --data.random-crop or the cache")
    with main_process_first(accelerator):  # however long the main process takes to build it
        if not TeacherFeatureCache.is_complete(directory):
            loader = make_dataloader(config.data, batch_size=64, shuffle=False, num_workers=0, drop_last=False)
            batches = ((b["image"].to(accelerator.device), b["index"])
                       for b in tqdm(loader, desc="teacher features", disable=not accelerator.is_main_process))
            precompute_teacher_features(teacher, batches, config.model.scale_sizes, directory,
                                        config.alignment.teacher)
    return TeacherFeatureCache(directory, config.alignment.teacher, config.model.scale_sizes)


def restart_dead_codes(accelerator: Accelerator, model: MultiScaleVQVAE, latent: torch.Tensor,
                       generator: torch.Generator) -> None:
    """Restart dead codes on the main process and broadcast the codebook so processes stay identical."""
    if model.config.dead_code_threshold <= 0:
        return
    if accelerator.is_main_process:
        model.quantizer.restart_dead_codes(latent, generator)
    if accelerator.num_processes > 1:
        weight = model.quantizer.embedding.weight
        weight.data.copy_(broadcast(weight.data.contiguous(), from_process=0))
