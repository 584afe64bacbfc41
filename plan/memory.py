"""Memory of one transformer training step per device: weights, gradients, optimiser states, activations.

Activations are counted tensor by tensor from what the transformer's code saves for the backward pass
(transformer/block.py, attention.py, model.py), per token, per image and per block, in the dtype each
one has: under bf16 autocast the matrix inputs and outputs are bf16 while the residual stream and the
LayerNorms stay fp32, and autocast's bf16 copy of every weight matrix is held until the backward pass
uses it. Attention is a fused kernel (SDPA's flash or memory-efficient path, or xformers): it keeps
queries, keys, values, the output and one log-sum-exp per head and token, plus the block-causal mask as
an L x L float bias, never the L x L probabilities (the `naive` backend does: they are added for it).

With activation checkpointing (train/checkpointing.py) a block keeps only its input and the text keys
and values it reads; its activations exist again for one block at a time, in the backward pass.

The step's peak is reached when the backward pass starts: every activation is alive, with the logits
(the current ones, the previous step's kept for the logged per-scale metrics, and the two gradients of
the loss's log-softmax), on top of the weights, the optimiser states and the frozen tokenizer; the
gradients, which replace the activations as the backward pass frees them, make the peak instead when
they are the larger part. How close this comes to measured peaks: docs/experiments/planner-validation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from nextscale.transformer import NextScaleTransformer, TransformerConfig

FP32 = 4


@dataclass(frozen=True)
class Parameters:
    """Parameter counts of a transformer, from the model itself (built without memory on the meta device)."""

    total: int
    block: int
    """Parameters of one block: the unit FSDP gathers at a time."""
    matrices: int
    """Weights of every nn.Linear: what bf16 autocast copies."""
    block_matrices: int
    """Weights of the nn.Linear layers one block's forward runs (its text key/value projection runs before
    the blocks, once per prompt)."""


def count_parameters(shape: TransformerConfig) -> Parameters:
    with torch.device("meta"):
        model = NextScaleTransformer(shape)
    block = model.blocks[0]
    linear = lambda module: sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
    text = linear(block.cross_attention.key_value) if block.cross_attention is not None else 0
    return Parameters(total=model.num_parameters(), block=sum(p.numel() for p in block.parameters()),
                      matrices=linear(model), block_matrices=linear(block) - text)


def block_bytes(shape: TransformerConfig, text_length: int, batch: int, act: int) -> int:
    """Bytes one block saves for backward at micro-batch `batch` (`act`: bytes of an autocast matmul's
    inputs and outputs; the residual stream and LayerNorm statistics are fp32)."""
    w, heads, length = shape.width, shape.num_heads, shape.num_tokens
    hidden = round(w * shape.mlp_ratio)
    qk = shape.qk_norm
    # self-attention: residual in, LN statistics, normalised (for the modulation), per-head log-sum-exp;
    # modulated input, q|k|v, output, projected output (for the gate); qk-norm: unit q, scaled q, unit k
    token = FP32 * (2 * w + 2 + heads) + act * (6 * w + (3 * w + 4 * heads if qk else 0))
    # MLP: residual in, LN statistics, normalised; modulated input, fc1 out, GELU out, fc2 out (for the gate)
    token += FP32 * (2 * w + 2) + act * (2 * w + 2 * hidden)
    # per image: the condition through SiLU (in, out), the six modulation vectors, 1 + scale twice
    image = act * 10 * w
    if shape.cross_attention:
        token += FP32 * (w + 2 + heads) + act * (3 * w + (2 * w + 2 * heads if qk else 0))
        image += act * 2 * text_length * w  # the text keys and values this block reads
    if shape.dropout > 0:
        token += (3 if shape.cross_attention else 2) * w  # one-byte dropout masks
    fixed = act * length * length  # the block-causal mask as a float bias
    if shape.attention_backend == "naive":
        token += act * heads * length  # the attention probabilities
    return batch * (length * token + image) + fixed


def outside_bytes(shape: TransformerConfig, text_length: int, batch: int, act: int) -> int:
    """Bytes saved outside the blocks: the embedded inputs, the text's LayerNorm, the head and the loss."""
    w, length, vocab = shape.width, shape.num_tokens, shape.vocab_size
    token = act * shape.latent_dim + FP32 * (2 * w + 2) + act * w + 8  # teacher inputs, head LN, head input, targets
    token += FP32 * vocab  # the log-softmax the cross-entropy keeps
    image = act * 2 * w  # the head's modulation input through SiLU
    if not shape.class_conditional:
        image += FP32 * shape.text_width  # pooled text into the condition
    if shape.cross_attention:
        image += FP32 * text_length * (shape.text_width + 2) + act * text_length * shape.text_width
    return batch * (length * token + image)


def logits_bytes(shape: TransformerConfig, batch: int) -> int:
    """One fp32 logits tensor (b, L, vocab)."""
    return FP32 * batch * shape.num_tokens * shape.vocab_size


@dataclass(frozen=True)
class Activations:
    """Activation bytes of one micro-batch, plain or with activation checkpointing, and the step's peak."""

    outside: int
    """Saved outside the blocks (autocast's weight copies outside them included), the log-softmax too."""
    per_block: int
    """Saved by each block (with checkpointing: its input and the text keys and values it reads)."""
    depth: int
    recomputed: int
    """One block's activations, made again in the backward pass (0 without checkpointing)."""
    logits: int
    """One fp32 logits tensor, the log-softmax's size too."""
    gradients: int
    """fp32 gradients of every parameter, all present at the end of the backward pass."""
    block_gradients: int

    @property
    def saved(self) -> int:
        """Everything saved for backward when the backward pass starts."""
        return self.outside + self.depth * self.per_block

    @property
    def peak(self) -> int:
        """The step's peak above the weights, optimiser states and frozen parts: when the backward pass
        starts (four logits tensors: the current ones, the previous step's, two gradients), at the last
        block's backward and at the first (the gradients grow as the blocks' activations go), or at the end."""
        start = self.saved + 4 * self.logits
        last_block = self.saved - self.logits + self.recomputed + 2 * self.logits
        first_block = (self.outside - self.logits + self.per_block + self.recomputed + 2 * self.logits
                       + self.gradients - self.block_gradients)
        return max(start, last_block, first_block, self.gradients + 2 * self.logits)


def activations(shape: TransformerConfig, text_length: int, batch: int, precision: str,
                parameters: Parameters, checkpointing: bool, weight_copies: bool = True) -> Activations:
    """The activations of micro-batch `batch` under `precision` ("no": fp32, "bf16"/"fp16": autocast), with
    autocast's copies of the weights (`weight_copies`; FSDP gathers the weights in that dtype instead)."""
    act = 2 if precision in ("bf16", "fp16") else FP32
    block = block_bytes(shape, text_length, batch, act)
    outside = outside_bytes(shape, text_length, batch, act)
    copied = act == 2 and weight_copies
    copies = 2 * parameters.matrices if copied else 0  # autocast's bf16 weights, saved for backward
    block_copies = 2 * parameters.block_matrices if copied else 0
    common = dict(logits=logits_bytes(shape, batch), gradients=FP32 * parameters.total,
                  block_gradients=FP32 * parameters.block, depth=shape.depth)
    if not checkpointing:
        return Activations(outside + copies - shape.depth * block_copies, block + block_copies, recomputed=0,
                           **common)
    kept = batch * (FP32 * shape.num_tokens * shape.width
                    + (act * 2 * text_length * shape.width if shape.cross_attention else 0))
    return Activations(outside + copies - shape.depth * block_copies, kept, recomputed=block + block_copies,
                       **common)


@dataclass(frozen=True)
class DeviceMemory:
    """Bytes per device of one strategy at one micro-batch."""

    weights: int
    gradients: int
    optimizer: int
    frozen: int
    """The frozen tokenizer (and text encoder, when known) on every device."""
    buffers: int
    """DDP's gradient buckets, or FSDP's gathered block (weights and gradients)."""
    activations: Activations

    @property
    def static(self) -> int:
        return self.weights + self.optimizer + self.frozen + self.buffers

    @property
    def peak(self) -> int:
        return self.static + self.activations.peak


def device_memory(strategy: str, devices: int, parameters: Parameters, frozen: int,
                  activation: Activations, precision: str = "no") -> DeviceMemory:
    """`strategy` "single" (one process), "ddp" (every device holds everything, plus DDP's gradient buckets)
    or "fsdp" (FSDP2: weights, gradients and AdamW's
    two moments sharded over `devices`, one block gathered at a time and the next one prefetched, in the
    autocast dtype under `precision` bf16 or fp16, with one block's fp32 gradients before their reduction)."""
    total = parameters.total
    if strategy in ("single", "ddp"):
        buckets = FP32 * total if strategy == "ddp" else 0
        return DeviceMemory(FP32 * total, FP32 * total, 2 * FP32 * total, frozen, buckets, activation)
    if strategy != "fsdp":
        raise ValueError(f"strategy must be single, ddp or fsdp, got {strategy!r}")
    shard = math.ceil(total / devices)
    gathered_bytes = 2 if precision in ("bf16", "fp16") else FP32
    gathered = 2 * gathered_bytes * parameters.block + FP32 * parameters.block  # two blocks, one's gradients
    sharded = replace(activation, gradients=FP32 * shard)
    return DeviceMemory(FP32 * shard, FP32 * shard, 2 * FP32 * shard, frozen, gathered, sharded)
