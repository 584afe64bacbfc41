"""The transformer's training objective: teacher-forced cross-entropy over all scales, condition dropout,
per-scale metrics and the held-out evaluation."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nextscale.data import loader_over
from nextscale.scales import scale_offsets, unflatten_codes
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.var_data import on_the_fly_batches, on_the_fly_class_batches
from nextscale.transformer import NextScaleTransformer, TransformerConfig
from nextscale.transformer.text import TextEncoder

if TYPE_CHECKING:
    from nextscale.train.var_loop import VarTrainConfig


def drop_condition(
    text: dict[str, torch.Tensor], null: dict[str, torch.Tensor], probability: float, generator: torch.Generator
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Replace each row's text by the empty prompt's with `probability`; return (text, dropped (b,) bool).

    `text` and `null` hold text_tokens (b|1, t, d), text_mask (b|1, t), text_pooled (b|1, d).
    """
    batch = text["text_pooled"].shape[0]
    dropped = torch.rand(batch, generator=generator, device=generator.device) < probability
    dropped = dropped.to(text["text_pooled"].device)
    out = {}
    for key, value in text.items():
        keep = dropped.view(batch, *([1] * (value.dim() - 1)))
        out[key] = torch.where(keep, null[key].to(value.device, value.dtype).expand_as(value), value)
    return out, dropped


def drop_labels(labels: torch.Tensor, null_class: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label (b,) by the null class with `probability` (classifier-free guidance training)."""
    dropped = torch.rand(labels.shape[0], generator=generator, device=generator.device) < probability
    return torch.where(dropped.to(labels.device), torch.full_like(labels, null_class), labels)


def per_scale_metrics(logits: torch.Tensor, targets: torch.Tensor, scale_sizes: tuple[int, ...]) -> dict[str, float]:
    """Cross-entropy and accuracy of each scale: logits (b, L, V), targets (b, L)."""
    offsets = scale_offsets(scale_sizes)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (b, L)
    correct = (logits.argmax(-1) == targets).float()
    metrics = {}
    for k in range(len(scale_sizes)):
        start, end = offsets[k], offsets[k + 1]
        metrics[f"loss_scale{k}"] = losses[:, start:end].mean().item()
        metrics[f"accuracy_scale{k}"] = correct[:, start:end].mean().item()
    return metrics


class VarObjective(torch.nn.Module):
    """Transformer + frozen tokenizer: codes and the condition (text states or labels) in, cross-entropy over
    all scales out."""

    def __init__(self, model: NextScaleTransformer, tokenizer: MultiScaleVQVAE, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.label_smoothing = label_smoothing

    def forward(self, codes: torch.Tensor, condition: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """codes (b, L) long and the condition ({text_tokens, text_mask, text_pooled} or {labels}) -> (loss,
        logits (b, L, V))."""
        with torch.no_grad(), torch.autocast(device_type=codes.device.type, enabled=False):
            inputs = self.tokenizer.teacher_inputs(unflatten_codes(codes, self.tokenizer.scale_sizes))
        logits = self.model(inputs, **condition)
        loss = F.cross_entropy(logits.transpose(1, 2), codes, label_smoothing=self.label_smoothing)
        return loss, logits


def matched_model_config(
    config: VarTrainConfig, tokenizer: MultiScaleVQVAE, text_width: int | None, num_classes: int = 0
) -> TransformerConfig:
    """--model with the tokenizer's scales, codebook and latent, and the text width (text models) or the
    number of classes, without cross-attention (class models)."""
    fitted = dataclasses.replace(config.model, scale_sizes=tokenizer.config.scale_sizes,
                                 vocab_size=tokenizer.config.vocab_size, latent_dim=tokenizer.config.latent_dim)
    if num_classes:
        return dataclasses.replace(fitted, num_classes=num_classes, cross_attention=False)
    assert text_width is not None
    return dataclasses.replace(fitted, text_width=text_width)


def text_to(batch: dict[str, torch.Tensor], device: torch.device, prefix: str = "") -> dict[str, torch.Tensor]:
    """The text states of a batch on `device` (fp32, bool mask), read from its keys `prefix` + text_tokens,
    text_mask, text_pooled (prefix "detail_", "layout_": the mixing captions of a mixing cache)."""
    return {
        "text_tokens": batch[f"{prefix}text_tokens"].to(device, torch.float32),
        "text_mask": batch[f"{prefix}text_mask"].to(device).bool(),
        "text_pooled": batch[f"{prefix}text_pooled"].to(device, torch.float32),
    }


@torch.no_grad()
def evaluate_held_out(
    model: NextScaleTransformer, tokenizer: MultiScaleVQVAE, text_encoder: TextEncoder | None, evaluation: Dataset,
    eval_images: int,
) -> dict:
    """Teacher-forced per-scale loss and accuracy on held-out images with their captions (or class labels,
    without a text encoder)."""
    loader = loader_over(evaluation, batch_size=64, shuffle=False, num_workers=0, drop_last=False)
    objective = VarObjective(model, tokenizer, 0.0).eval()
    sums: dict[str, float] = {}
    count = 0
    device = next(model.parameters()).device
    batches = (on_the_fly_class_batches(loader, tokenizer) if text_encoder is None
               else on_the_fly_batches(loader, tokenizer, text_encoder))
    for batch in batches:
        codes = batch["codes"].to(device)
        condition = {"labels": batch["labels"].to(device)} if text_encoder is None else text_to(batch, device)
        _, logits = objective(codes, condition)
        for key, value in per_scale_metrics(logits, codes, model.config.scale_sizes).items():
            sums[key] = sums.get(key, 0.0) + value * codes.shape[0]
        count += codes.shape[0]
        if count >= eval_images:
            break
    metrics = {key: value / count for key, value in sums.items()}
    metrics["held_out_images"] = count
    metrics["held_out_loss"] = sum(
        metrics[f"loss_scale{k}"] * size * size for k, size in enumerate(model.config.scale_sizes)
    ) / model.config.num_tokens
    return metrics


def format_var_metrics(metrics: dict, num_scales: int) -> str:
    lines = [f"held-out loss {metrics['held_out_loss']:.3f} on {metrics['held_out_images']} images",
             "scale  loss   accuracy"]
    for k in range(num_scales):
        lines.append(f"{k:>5}  {metrics[f'loss_scale{k}']:.3f}  {metrics[f'accuracy_scale{k}']:.3f}")
    return "\n".join(lines)


