"""The planner's check against reality: the peak tensor memory of real training steps, measured.

`TensorMemory` counts the bytes of every tensor storage alive while a region runs (each storage once,
however many views it has), from the ops that create them to the moment Python frees them, and keeps
the peak. It sees what the allocator is asked for, op by op, on any device (on a CPU, resident memory
is too noisy for this), but not the scratch space inside one kernel, nor the allocator's rounding and
caching (on CUDA, `torch.cuda.max_memory_allocated` is the reading to compare with).

`measure_step` runs the transformer training's step as the runtime does it (the objective with its
frozen tokenizer, backward, gradient clipping, AdamW over the training's parameter groups, zero_grad,
the logits kept for the logged metrics) and reports the peak of the last of `steps` steps, when the
optimiser states exist.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.transformer import NextScaleTransformer, TransformerConfig


class TensorMemory(TorchDispatchMode):
    """Live and peak bytes of tensor storage over a region (`with TensorMemory() as memory:`)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()

    def track(self, tensors: Any) -> None:
        """Count tensors that existed before the region (parameters, optimiser states)."""
        for tensor in tree_flatten(tensors)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)

    def reset_peak(self) -> None:
        self.peak = self.live

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen.add(storage)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                self._add(tensor)
        return out


@dataclass(frozen=True)
class Measured:
    """Peak tensor bytes of one training step, and what was resident before it began."""

    peak: int
    static: int
    """Weights, optimiser states and the frozen tokenizer alive between steps."""


def probe_tokenizer(shape: TransformerConfig) -> MultiScaleVQVAE:
    """A small frozen tokenizer with the transformer's scales, codebook and latent (what the objective needs
    to turn codes into teacher inputs)."""
    levels = max(1, (shape.scale_sizes[-1]).bit_length())
    image = shape.scale_sizes[-1] * 2 ** (levels - 1)
    config = TokenizerConfig(image_size=image, scale_sizes=shape.scale_sizes, vocab_size=shape.vocab_size,
                             latent_dim=shape.latent_dim, channel_mult=(1,) * levels, encoder_channels=16,
                             decoder_channels=16, encoder_res_blocks=1, decoder_res_blocks=1, num_phi=1)
    return MultiScaleVQVAE(config)


def step_inputs(shape: TransformerConfig, text_length: int, batch: int, generator: torch.Generator) -> tuple:
    """Random codes and a condition for one micro-batch (text states of `text_length` tokens, or labels)."""
    codes = torch.randint(0, shape.vocab_size, (batch, shape.num_tokens), generator=generator)
    if shape.class_conditional:
        return codes, {"labels": torch.randint(0, shape.num_classes + 1, (batch,), generator=generator)}
    text = {"text_pooled": torch.randn(batch, shape.text_width, generator=generator)}
    if shape.cross_attention:
        text["text_tokens"] = torch.randn(batch, text_length, shape.text_width, generator=generator)
        text["text_mask"] = torch.ones(batch, text_length, dtype=torch.bool)
    return codes, text


def measure_step(shape: TransformerConfig, text_length: int, batch: int, precision: str = "no",
                 checkpointing: bool = False, steps: int = 2) -> Measured:
    """Peak tensor memory of the last of `steps` training steps of `shape` at micro-batch `batch` on the CPU,
    in fp32 (`precision` "no") or under bf16 autocast ("bf16")."""
    from nextscale.train.checkpointing import checkpoint_transformer
    from nextscale.train.optim import adamw_with_schedule
    from nextscale.train.var_objective import VarObjective

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = NextScaleTransformer(shape).train()
    if checkpointing:
        checkpoint_transformer(model)
    objective = VarObjective(model, probe_tokenizer(shape), 0.0)
    optimizer, _ = adamw_with_schedule(model, 1e-4, 0.05, (0.9, 0.95), 100, 0, 0.2)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    kept = None
    memory = TensorMemory()
    with memory:
        memory.track([list(objective.parameters()), list(objective.buffers())])
        for _ in range(steps):
            codes, condition = step_inputs(shape, text_length, batch, generator)
            memory.reset_peak()
            static = memory.live
            with autocast:
                loss, logits = objective(codes, condition)
            loss.backward()
            kept = logits.detach()  # what the training keeps for its per-scale metrics
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss, logits
    del kept
    return Measured(peak=memory.peak, static=static)
