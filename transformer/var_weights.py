"""The official class-conditional VAR transformers (`var_d16.pth` ... `var_d30.pth`) as `NextScaleTransformer`s.

VAR's model maps one to one onto ours (Tian et al. 2024; FoundationVision/VAR `models/var.py`):

    VAR                              nextscale
    word_embed                       input_embed
    class_emb (N + 1 rows)           class_embed (row N = the null class)
    pos_1LC, pos_start               position_embed, with pos_start added to the first scale's positions
    lvl_embed                        level_embed
    blocks.{i}.attn.mat_qkv          blocks.{i}.self_attention.qkv (no bias: key_bias=False)
    blocks.{i}.attn.q_bias / v_bias  blocks.{i}.self_attention.query_bias / value_bias
    blocks.{i}.attn.scale_mul_1H11   blocks.{i}.self_attention.qk_norm.log_scale
    blocks.{i}.attn.proj             blocks.{i}.self_attention.output
    blocks.{i}.ffn.fc1 / fc2         blocks.{i}.mlp.fc1 / fc2
    blocks.{i}.ada_lin.1             blocks.{i}.modulation.1, chunks reordered (below)
    head_nm.ada_lin.1                head_modulation.1, chunks reordered (below)
    head                             head

VAR splits a block's modulation into (gamma1, gamma2, scale1, scale2, shift1, shift2), ours is
(shift, scale, gate) for attention then for the MLP; the head's is (scale, shift) against our
(shift, scale). Reordering the rows of those linear layers is exact, so no option is needed for it.
The buffers `lvl_1L` and `attn_bias_for_masking` are recomputed from the scale sizes (and checked
against ours when present and holding values), `zero_k_bias` is checked to be zero.
"""

from __future__ import annotations

import torch

from nextscale.scales import block_causal_mask, scale_index, scale_offsets, total_tokens
from nextscale.state_mapping import ConversionError, ForeignState
from nextscale.transformer.config import TransformerConfig

VAR_SCALE_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
"""VAR's `patch_nums` for 256 px images (680 tokens)."""
BLOCK_MODULATION_ORDER = (4, 2, 0, 5, 3, 1)
"""Our (shift, scale, gate) x (attention, MLP) chunk i is VAR's chunk BLOCK_MODULATION_ORDER[i]."""
HEAD_MODULATION_ORDER = (1, 0)
"""Our head (shift, scale) chunk i is VAR's (scale, shift) chunk HEAD_MODULATION_ORDER[i]."""


def var_transformer_config(state: ForeignState, scale_sizes: tuple[int, ...] = VAR_SCALE_SIZES) -> TransformerConfig:
    """The `TransformerConfig` of a VAR state dict: depth, width, heads and classes read off its shapes."""
    width, latent_dim = state.shape("word_embed.weight")
    depth = state.count("blocks.{}.ada_lin.1.weight")
    if depth == 0:
        raise ConversionError(f"{state.source} has no blocks.0.ada_lin: not a VAR transformer state dict")
    tokens = state.shape("pos_1LC")[1]
    if tokens != total_tokens(scale_sizes):
        raise ConversionError(
            f"{state.source} has {tokens} positions but scale sizes {scale_sizes} make {total_tokens(scale_sizes)}"
        )
    try:
        return TransformerConfig(
            depth=depth,
            width=width,
            num_heads=state.shape("blocks.0.attn.scale_mul_1H11")[1],
            mlp_ratio=state.shape("blocks.0.ffn.fc1.weight")[0] / width,
            scale_sizes=scale_sizes,
            vocab_size=state.shape("head.weight")[0],
            latent_dim=latent_dim,
            num_classes=state.shape("class_emb.weight")[0] - 1,
            cross_attention=False,
            drop_path=0.1 * depth / 24,
            qk_norm=True,
            key_bias=False,
            norm_eps=1e-6,
        )
    except ValueError as error:
        raise ConversionError(f"{state.source}: its shapes give no valid transformer config: {error}") from error


def reorder_chunks(tensor: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Split dim 0 of a linear layer's weight or bias into len(order) chunks and put chunk order[i] at i."""
    chunks = tensor.chunk(len(order), dim=0)
    return torch.cat([chunks[index] for index in order], dim=0)


def _holds_values(tensor: torch.Tensor) -> bool:
    return not tensor.is_meta


def convert_var_transformer(state: ForeignState, config: TransformerConfig) -> dict[str, torch.Tensor]:
    """VAR tensors -> our `NextScaleTransformer` state dict for `config` (from `var_transformer_config`).

    Raises ConversionError for missing or unmapped keys and for buffers that disagree with ours;
    shapes are checked by the caller against the built model.
    """
    out: dict[str, torch.Tensor] = {}
    first = scale_offsets(config.scale_sizes)[1]
    out["input_embed.weight"] = state.take("word_embed.weight")
    out["input_embed.bias"] = state.take("word_embed.bias")
    out["class_embed.weight"] = state.take("class_emb.weight")
    positions, start = state.take("pos_1LC"), state.take("pos_start")  # (1, L, C), (1, first, C)
    out["position_embed"] = torch.cat([positions[:, :first] + start, positions[:, first:]], dim=1)
    out["level_embed.weight"] = state.take("lvl_embed.weight")
    for index in range(config.depth):
        theirs, ours = f"blocks.{index}", f"blocks.{index}"
        out[f"{ours}.self_attention.qkv.weight"] = state.take(f"{theirs}.attn.mat_qkv.weight")
        out[f"{ours}.self_attention.query_bias"] = state.take(f"{theirs}.attn.q_bias")
        out[f"{ours}.self_attention.value_bias"] = state.take(f"{theirs}.attn.v_bias")
        if state.has(f"{theirs}.attn.zero_k_bias"):  # a buffer: optional, but it must be zero when present
            zero_key_bias = state.take(f"{theirs}.attn.zero_k_bias")
            if _holds_values(zero_key_bias) and bool(zero_key_bias.any()):
                raise ConversionError(f"{state.source}: {theirs}.attn.zero_k_bias is not zero; VAR keeps it at zero")
        out[f"{ours}.self_attention.qk_norm.log_scale"] = state.take(f"{theirs}.attn.scale_mul_1H11")
        for name in ("weight", "bias"):
            out[f"{ours}.self_attention.output.{name}"] = state.take(f"{theirs}.attn.proj.{name}")
            out[f"{ours}.mlp.fc1.{name}"] = state.take(f"{theirs}.ffn.fc1.{name}")
            out[f"{ours}.mlp.fc2.{name}"] = state.take(f"{theirs}.ffn.fc2.{name}")
            modulation = state.take(f"{theirs}.ada_lin.1.{name}")
            out[f"{ours}.modulation.1.{name}"] = reorder_chunks(modulation, BLOCK_MODULATION_ORDER)
    for name in ("weight", "bias"):
        head_modulation = state.take(f"head_nm.ada_lin.1.{name}")
        out[f"head_modulation.1.{name}"] = reorder_chunks(head_modulation, HEAD_MODULATION_ORDER)
        out[f"head.{name}"] = state.take(f"head.{name}")

    # Buffers we recompute from the scale sizes: optional, but checked against ours when present.
    if state.has("lvl_1L"):
        levels = state.take("lvl_1L")  # (1, L) scale of every token
        if _holds_values(levels) and not torch.equal(levels.flatten().long(), scale_index(config.scale_sizes)):
            raise ConversionError(f"{state.source}: lvl_1L does not match scale sizes {config.scale_sizes}")
    if state.has("attn_bias_for_masking"):
        bias = state.take("attn_bias_for_masking")  # (1, 1, L, L): 0 where visible, -inf elsewhere
        if _holds_values(bias) and not torch.equal(bias[0, 0] == 0, block_causal_mask(config.scale_sizes)):
            raise ConversionError(f"{state.source}: attn_bias_for_masking is not the block-causal mask of the scales")
    state.finish()
    return out
