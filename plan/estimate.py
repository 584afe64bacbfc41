"""The plan of one transformer training: FLOPs (the benchmarks' counter), memory per device, the largest
micro-batch that fits, hours."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nextscale.plan.config import PlanConfig, PlannedModel
from nextscale.plan.memory import FP32, DeviceMemory, Parameters, activations, count_parameters, device_memory
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer.flops import forward_flops, guided_sampling_flops, training_flops

STRATEGIES = ("ddp", "fsdp")
BLOCK_PARTS = ("projections", "self_attention", "cross_attention", "mlp", "modulation")
"""The FLOP parts of `forward_flops` that run inside the blocks (what activation checkpointing runs again)."""


@dataclass(frozen=True)
class Plan:
    config: PlanConfig
    model: PlannedModel
    parameters: Parameters
    tokenizer_parameters: int
    frozen_bytes: int
    train_flops: float
    """Matmul FLOPs of one training image (forward and backward), as the training benchmark counts them."""
    recompute_flops: float
    """What activation checkpointing adds per training image: one more forward of the blocks."""
    sampling_flops: float
    """Matmul FLOPs of sampling one image with the KV cache and guidance on every scale."""
    memory: dict[tuple[str, bool], DeviceMemory]
    """(strategy, activation checkpointing) -> bytes per device at the run's micro-batch."""
    largest_batch: dict[tuple[str, bool], int]
    """(strategy, activation checkpointing) -> the largest micro-batch within the usable memory (0: none)."""

    @property
    def usable_bytes(self) -> float:
        return self.config.gpu_memory_gb * 1e9 * (1 - self.config.memory_margin)

    def hours(self, checkpointing: bool = False) -> float:
        """Hours of the run at the stated utilisation of the stated peak, on every device."""
        flops = self.train_flops + (self.recompute_flops if checkpointing else 0.0)
        config = self.config
        return config.trained_images * flops / (config.gpus * config.gpu_tflops * 1e12 * config.mfu) / 3600


def frozen_bytes(model: PlannedModel) -> tuple[int, int]:
    """(tokenizer parameters, fp32 bytes of the frozen tokenizer and text encoder) on every device."""
    with torch.device("meta"):
        tokenizer = MultiScaleVQVAE(model.tokenizer)
    count = sum(p.numel() for p in tokenizer.parameters())
    return count, FP32 * (count + (model.text_parameters or 0))


def memory_at(plan_inputs: tuple[PlanConfig, PlannedModel, Parameters, int], strategy: str, checkpointing: bool,
              batch: int) -> DeviceMemory:
    config, model, parameters, frozen = plan_inputs
    copies = strategy != "fsdp"  # FSDP gathers the blocks in the autocast dtype: no autocast weight copies
    activation = activations(model.shape, model.text_length, batch, config.precision, parameters, checkpointing,
                             weight_copies=copies)
    return device_memory(strategy, config.gpus, parameters, frozen, activation, config.precision)


def largest_batch(plan_inputs: tuple[PlanConfig, PlannedModel, Parameters, int], strategy: str,
                  checkpointing: bool, usable: float) -> int:
    """The largest micro-batch whose peak stays within `usable` bytes (memory grows with the batch)."""
    fits = lambda batch: memory_at(plan_inputs, strategy, checkpointing, batch).peak <= usable
    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high) and high < 1 << 24:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def make_plan(config: PlanConfig, model: PlannedModel) -> Plan:
    parameters = count_parameters(model.shape)
    tokenizer_parameters, frozen = frozen_bytes(model)
    inputs = (config, model, parameters, frozen)
    forward = forward_flops(model.shape, model.text_length)
    usable = config.gpu_memory_gb * 1e9 * (1 - config.memory_margin)
    strategies = STRATEGIES if config.gpus > 1 else ("single",)  # one device: no gradient buckets, no shards
    keys = [(strategy, checkpointing) for strategy in strategies for checkpointing in (False, True)]
    return Plan(
        config=config, model=model, parameters=parameters, tokenizer_parameters=tokenizer_parameters,
        frozen_bytes=frozen, train_flops=training_flops(model.shape, model.text_length),
        recompute_flops=sum(getattr(forward, part) for part in BLOCK_PARTS),
        sampling_flops=guided_sampling_flops(model.shape, model.text_length),
        memory={key: memory_at(inputs, *key, config.batch_size) for key in keys},
        largest_batch={key: largest_batch(inputs, *key, usable) for key in keys},
    )
