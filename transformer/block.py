"""The transformer block of VAR (its AdaLNSelfAttn) with cross-attention to text, and its pieces.

A block is pre-norm: adaptive-LayerNorm-modulated self-attention (shift, scale, gate from the condition
vector; DiT's adaLN-Zero, Peebles & Xie 2023), cross-attention to the text tokens (text models only),
then an AdaLN-modulated MLP; each residual branch may be dropped by stochastic depth while training.
"""

from __future__ import annotations

import torch
from torch import nn

from nextscale.transformer.attention import CrossAttention, KVCache, SelfAttention
from nextscale.transformer.config import TransformerConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: x (b, l, width) * (1 + scale) + shift, with shift and scale (b, 1, width) or per token (b, l, width)."""
    return x * (1 + scale) + shift


def per_token(vectors: torch.Tensor, choice: torch.Tensor | None) -> torch.Tensor:
    """Broadcast per-image vectors over the tokens: (b, n) -> (b, 1, n).

    With several conditions per image, `vectors` (b, c, n) holds one row per condition and `choice` (b, l)
    long names each token's: -> (b, l, n).
    """
    if choice is None:
        return vectors.unsqueeze(1)
    return torch.gather(vectors, 1, choice.unsqueeze(-1).expand(-1, -1, vectors.shape[-1]))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples while training."""

    def __init__(self, probability: float) -> None:
        super().__init__()
        self.probability = probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.probability == 0.0:
            return x
        keep = 1.0 - self.probability
        return x * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep) / keep  # (b, 1, 1) per-sample mask


class MLP(nn.Module):
    """Two-layer feed-forward network with tanh-GELU, as GPT-2 and VAR."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.activation = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm block: AdaLN-modulated self-attention, cross-attention to text, AdaLN-modulated MLP."""

    def __init__(self, config: TransformerConfig, drop_path: float) -> None:
        super().__init__()
        width = config.width
        self.norm_attention = nn.LayerNorm(width, elementwise_affine=False, eps=config.norm_eps)
        self.self_attention = SelfAttention(
            width=width,
            num_heads=config.num_heads,
            qk_norm=config.qk_norm,
            attention_dropout=config.attention_dropout,
            dropout=config.dropout,
            backend=config.attention_backend,
            key_bias=config.key_bias,
        )
        self.norm_cross: nn.LayerNorm | None = None
        self.cross_attention: CrossAttention | None = None
        if config.cross_attention:
            self.norm_cross = nn.LayerNorm(width, eps=config.norm_eps)
            self.cross_attention = CrossAttention(
                width=width,
                text_width=config.text_width,
                num_heads=config.num_heads,
                qk_norm=config.qk_norm,
                attention_dropout=config.attention_dropout,
                dropout=config.dropout,
                backend=config.attention_backend,
            )
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False, eps=config.norm_eps)
        self.mlp = MLP(width, round(width * config.mlp_ratio), config.dropout)
        # shift, scale, gate for the attention and for the MLP branch, from the condition vector
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor,
        text_keys: torch.Tensor | None,
        text_values: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        choice: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (b, l, width), condition (b, width) -> (b, l, width).

        With `choice` (b, l) long, `condition` is (b, c, width), one row per condition, and token j is
        modulated by condition choice[:, j] (per-scale prompts in one pass)."""
        shift_attention, scale_attention, gate_attention, shift_mlp, scale_mlp, gate_mlp = (
            per_token(self.modulation(condition), choice).chunk(6, dim=-1)  # 6 x (b, 1 | l, width)
        )
        attended = self.self_attention(modulate(self.norm_attention(x), shift_attention, scale_attention), mask, cache)
        x = x + self.drop_path(gate_attention * attended)
        if self.cross_attention is not None and self.norm_cross is not None:
            assert text_keys is not None and text_values is not None and text_mask is not None
            x = x + self.drop_path(self.cross_attention(self.norm_cross(x), text_keys, text_values, text_mask))
        x = x + self.drop_path(gate_mlp * self.mlp(modulate(self.norm_mlp(x), shift_mlp, scale_mlp)))
        return x
