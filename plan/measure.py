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
    """Peak bytes of one training step, and what was resident when it began."""

    peak: int
    """Tensor storage counted by `TensorMemory` (0 when not tracked)."""
    static: int
    """Weights, optimiser states, the frozen tokenizer and the previous step's logits, at the step's start."""
    allocated: int = 0
    """CUDA only: `torch.cuda.max_memory_allocated` over the step (what the caching allocator handed out)."""


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


class TrainingStep:
    """The transformer training's step as the runtime runs it, on random codes and conditions: the objective
    with its frozen tokenizer, backward, gradient clipping, AdamW over the training's parameter groups,
    zero_grad, and the logits kept for the logged metrics until the next step."""

    def __init__(self, shape: TransformerConfig, text_length: int, batch: int, precision: str = "no",
                 checkpointing: bool = False, device: str = "cpu") -> None:
        from nextscale.train.checkpointing import checkpoint_transformer
        from nextscale.train.optim import adamw_with_schedule
        from nextscale.train.var_objective import VarObjective

        torch.manual_seed(0)
        self.shape, self.text_length, self.batch, self.device = shape, text_length, batch, torch.device(device)
        self.generator = torch.Generator().manual_seed(0)
        with self.device:  # built where it trains (a GPU initialises VAR-d16 in moments)
            self.model = NextScaleTransformer(shape).train()
            tokenizer = probe_tokenizer(shape)
        if checkpointing:
            checkpoint_transformer(self.model)
        self.objective = VarObjective(self.model, tokenizer, 0.0)
        self.optimizer, _ = adamw_with_schedule(self.model, 1e-4, 0.05, (0.9, 0.95), 100, 0, 0.2)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.kept: torch.Tensor | None = None

    def inputs(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes, condition = step_inputs(self.shape, self.text_length, self.batch, self.generator)
        return codes.to(self.device), {key: value.to(self.device) for key, value in condition.items()}

    def __call__(self, inputs: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None) -> None:
        codes, condition = self.inputs() if inputs is None else inputs
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext())
        with autocast:
            loss, logits = self.objective(codes, condition)
        loss.backward()
        self.kept = logits.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure_step(shape: TransformerConfig, text_length: int, batch: int, precision: str = "no",
                 checkpointing: bool = False, steps: int = 2, device: str = "cpu", track: bool = True) -> Measured:
    """Peak memory of the last of `steps` training steps of `shape` at micro-batch `batch`, in fp32
    (`precision` "no") or under bf16 autocast ("bf16"): tensor storage counted by `TensorMemory` (`track`),
    and on CUDA the allocator's peak too."""
    step = TrainingStep(shape, text_length, batch, precision, checkpointing, device)
    cuda = step.device.type == "cuda"
    memory = TensorMemory()
    with memory if track else nullcontext():
        memory.track([list(step.objective.parameters()), list(step.objective.buffers())])
        for _ in range(steps):
            inputs = step.inputs()
            memory.reset_peak()
            static = memory.live
            if cuda:
                torch.cuda.reset_peak_memory_stats(step.device)
            step(inputs)
            del inputs
    allocated = torch.cuda.max_memory_allocated(step.device) if cuda else 0
    return Measured(peak=memory.peak if track else 0, static=static if track else 0, allocated=allocated)
