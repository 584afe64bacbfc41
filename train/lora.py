"""`train_var.py --init-from PIPELINE --lora.rank N`: fine-tune a LoRA adapter on a frozen base transformer.

The adapter is peft's LoRA (`nextscale.sampling.adapters`) on the linear layers of the groups named by
`--lora.targets`; the base weights stay frozen, so the optimiser holds the LoRA matrices only. The run is
the ordinary training runtime (exact resume, non-finite steps skipped, previews sampled with the adapter
on); it exports `output_dir/adapter` instead of a whole model and pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from nextscale.sampling.adapters import base_identity, inject, lora_settings, save_adapter

LoraTarget = Literal["self-attention", "cross-attention", "mlp"]


@dataclass(frozen=True)
class LoraOptions:
    """A LoRA adapter instead of a full fine-tune (needs --init-from: the base it fits)."""

    rank: int = 0
    """Rank of the LoRA update of each targeted projection; 0 trains the whole transformer instead."""
    alpha: float | None = None
    """LoRA alpha: the update is scaled by alpha / rank (None: alpha = rank, a scale of 1)."""
    targets: tuple[LoraTarget, ...] = ("self-attention", "cross-attention", "mlp")
    """Projection groups that get an adapter: self-attention (qkv, output), cross-attention (query, key_value,
    output), mlp (fc1, fc2), in every block."""
    dropout: float = 0.0
    """Dropout on the LoRA branch's input while training."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"--lora.rank must be >= 0, got {self.rank}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"--lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--lora.dropout is a probability in [0, 1), got {self.dropout}")
        if self.rank:
            lora_settings(self.rank, self.alpha, self.targets, self.dropout)  # unknown targets fail here

    @property
    def enabled(self) -> bool:
        return self.rank > 0


def check_lora_run(options: LoraOptions, init_from: str | None) -> None:
    """A LoRA run fine-tunes a base: it needs --init-from."""
    if options.enabled and not init_from:
        raise ValueError("--lora.rank trains an adapter on a base model: pass --init-from PIPELINE (or its "
                         "transformer directory)")


@dataclass
class TrainingAdapter:
    """The adapter of a LoRA run: its settings and the identity of the base it was attached to."""

    settings: dict
    base: dict

    def export(self, model: nn.Module, output_dir: Path, extra: dict | None = None) -> dict:
        """Save `output_dir/adapter`; returns the metrics that describe it."""
        directory = save_adapter(model, output_dir / "adapter", self.settings, self.base, extra)
        adapter_parameters = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
        base_parameters = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
        size = (directory / "adapter_model.safetensors").stat().st_size
        return {"adapter": str(directory), "adapter_parameters": adapter_parameters,
                "adapter_fraction": adapter_parameters / base_parameters, "adapter_bytes": size,
                "lora": {k: v for k, v in self.settings.items() if k != "peft_type"}}


def attach_training_adapter(model: nn.Module, options: LoraOptions, base_name: str) -> TrainingAdapter:
    """Freeze `model` (already holding the base weights) and inject the LoRA layers; only they train."""
    base = {"pipeline": base_name, **base_identity(model)}
    settings = lora_settings(options.rank, options.alpha, options.targets, options.dropout)
    model.requires_grad_(False)
    inject(model, settings)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if not trainable or any("lora_" not in name for name in trainable):
        raise RuntimeError(f"LoRA injection left the wrong parameters trainable: {trainable[:4]}")
    return TrainingAdapter(settings, base)
