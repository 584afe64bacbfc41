"""Attention: block-causal self-attention with a KV cache, and cross-attention to text.

Shapes: queries, keys and values are `(b, heads, length, head_dim)`; a mask is boolean and broadcasts
to `(b, heads, query_length, key_length)`, True where the query may attend to the key (the convention
of `torch.nn.functional.scaled_dot_product_attention`).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from nextscale.transformer.config import AttentionBackend

XFORMERS_AVAILABLE = importlib.util.find_spec("xformers") is not None
# VAR clamps the learned log-scale of its l2-normalised attention at log(100) (`attn_l2_norm`).
MAX_LOG_QK_SCALE = math.log(100.0)


def key_padding_mask(text_mask: torch.Tensor) -> torch.Tensor:
    """Text mask (b, t), True = real token -> attention mask (b, 1, 1, t) for every head and query; a
    per-query mask (b, l, t) -> (b, 1, l, t)."""
    if text_mask.ndim == 3:
        return rearrange(text_mask.bool(), "b l t -> b 1 l t")
    return rearrange(text_mask.bool(), "b t -> b 1 1 t")


def naive_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Reference attention, softmax(Q K^T * scale) V (Vaswani et al. 2017), for tests and benchmarks."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", query, key) * scale  # (b, heads, query, key)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probabilities = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    probabilities = F.dropout(probabilities, p=dropout, training=dropout > 0)
    return torch.einsum("bhqk,bhkd->bhqd", probabilities, value)


def _xformers_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
    dropout: float,
) -> torch.Tensor:
    """xformers' memory-efficient kernel (CUDA): boolean mask -> additive bias, layout (b, length, heads, d)."""
    import xformers.ops

    bias = None
    if mask is not None:
        batch, heads, query_length, _ = query.shape
        key_length = key.shape[2]
        # The kernel wants the bias's last dimension padded to a multiple of 8 in memory.
        padded = key_length + (-key_length) % 8
        storage = query.new_zeros(batch, heads, query_length, padded)
        bias = storage[..., :key_length]
        bias.masked_fill_(~mask.expand(batch, heads, query_length, key_length), float("-inf"))
    output = xformers.ops.memory_efficient_attention(
        rearrange(query, "b h l d -> b l h d"),
        rearrange(key, "b h l d -> b l h d"),
        rearrange(value, "b h l d -> b l h d"),
        attn_bias=bias,
        p=dropout,
        scale=scale,
    )
    return rearrange(output, "b l h d -> b h l d")


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    backend: AttentionBackend = "sdpa",
) -> torch.Tensor:
    """Dispatch to a backend; `xformers` runs only when installed and on CUDA, else SDPA is used."""
    if backend == "naive":
        return naive_attention(query, key, value, mask, scale, dropout)
    if backend == "xformers":
        if XFORMERS_AVAILABLE and query.is_cuda:
            return _xformers_attention(query, key, value, mask, scale, dropout)
        if not XFORMERS_AVAILABLE:
            warnings.warn("attention_backend='xformers' but xformers is not installed; using SDPA", stacklevel=2)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)


@dataclass
class KVCache:
    """Keys and values of one self-attention layer, for incremental (scale-by-scale) inference.

    The buffers `(b, heads, max_length, head_dim)` are allocated on the first `append`, in the dtype
    and device of the keys it receives (so autocast picks the cache dtype), and filled in place;
    `length` tokens are valid. Memory over all layers: 2 * depth * b * L * width * bytes
    (e.g. VAR-d16, 680 tokens, batch 16, bf16: 713 MB).
    """

    max_length: int
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    length: int = 0

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' keys/values (b, heads, n, head_dim) after the cached ones; return all
        filled keys and values (b, heads, length, head_dim)."""
        if self.keys is None or self.values is None:
            batch, heads, _, head_dim = keys.shape
            self.keys = keys.new_empty(batch, heads, self.max_length, head_dim)
            self.values = values.new_empty(batch, heads, self.max_length, head_dim)
        end = self.length + keys.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} tokens; appending would make {end}")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    @property
    def num_bytes(self) -> int:
        """Bytes held by the key and value buffers (0 before the first append)."""
        if self.keys is None or self.values is None:
            return 0
        return self.keys.nbytes + self.values.nbytes


class QKNorm(nn.Module):
    """L2-normalised queries and keys with a learned per-head temperature (VAR's `attn_l2_norm`).

    Bounds the attention logits, which VAR found to stabilise training of deep models; the
    log-scale starts at log(4) and is clamped at log(100) as in VAR.
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))

    def scale_query(self, query: torch.Tensor) -> torch.Tensor:
        """(b, heads, l, head_dim) -> unit-norm queries times the per-head temperature."""
        return F.normalize(query, dim=-1) * self.log_scale.clamp(max=MAX_LOG_QK_SCALE).exp()

    @staticmethod
    def normalize_key(key: torch.Tensor) -> torch.Tensor:
        """(b, heads, l, head_dim) -> unit-norm keys."""
        return F.normalize(key, dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the token sequence, with an optional mask or KV cache."""

    def __init__(
        self,
        *,
        width: int,
        num_heads: int,
        qk_norm: bool,
        attention_dropout: float,
        dropout: float,
        backend: AttentionBackend,
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.backend = backend
        self.qkv = nn.Linear(width, 3 * width, bias=key_bias)
        # Without a key bias (VAR's `zero_k_bias`), queries and values keep theirs as separate parameters.
        self.query_bias = None if key_bias else nn.Parameter(torch.zeros(width))
        self.value_bias = None if key_bias else nn.Parameter(torch.zeros(width))
        self.qk_norm = QKNorm(num_heads) if qk_norm else None
        self.output = nn.Linear(width, width)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """x (b, l, width) -> (b, l, width). With `cache`, these tokens' K/V are appended to it and the
        queries attend over all cached tokens (which precede them), so no mask is needed."""
        qkv = self.project_qkv(x)  # (b, l, 3 * width)
        query, key, value = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        scale = None
        if self.qk_norm is not None:
            query, key = self.qk_norm.scale_query(query), self.qk_norm.normalize_key(key)
            scale = 1.0  # the learned temperature replaces 1/sqrt(head_dim)
        if cache is not None:
            key, value = cache.append(key, value)
        dropout = self.attention_dropout if self.training else 0.0
        out = attention(query, key, value, mask, scale, dropout, self.backend)  # (b, h, l, d)
        return self.output_dropout(self.output(rearrange(out, "b h l d -> b l (h d)")))


    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, l, width) -> queries | keys | values (b, l, 3 * width), the keys without bias if so configured."""
        if self.query_bias is None or self.value_bias is None:
            return self.qkv(x)
        bias = torch.cat([self.query_bias, torch.zeros_like(self.query_bias), self.value_bias])
        return F.linear(x, self.qkv.weight, bias)


class TextKeyValue(nn.Linear):
    """The projection of the text tokens to one block's cross-attention keys and values. It runs before the
    blocks, once per prompt, so a training that shards each block (FSDP) makes it a unit of its own."""


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens to text tokens, masking the text's padding.

    Text keys and values depend only on the prompt, so `text_keys_values` is computed once per prompt
    and reused at every scale during sampling.
    """

    def __init__(
        self,
        *,
        width: int,
        text_width: int,
        num_heads: int,
        qk_norm: bool,
        attention_dropout: float,
        dropout: float,
        backend: AttentionBackend,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.backend = backend
        self.query = nn.Linear(width, width)
        self.key_value = TextKeyValue(text_width, 2 * width)
        self.qk_norm = QKNorm(num_heads) if qk_norm else None
        self.output = nn.Linear(width, width)
        self.output_dropout = nn.Dropout(dropout)

    def text_keys_values(self, text_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text_tokens (b, t, text_width) -> keys, values (b, heads, t, head_dim), keys l2-normalised if qk_norm."""
        key, value = rearrange(self.key_value(text_tokens), "b t (two h d) -> two b h t d", two=2, h=self.num_heads)
        if self.qk_norm is not None:
            key = self.qk_norm.normalize_key(key)
        return key, value

    def forward(
        self, x: torch.Tensor, text_keys: torch.Tensor, text_values: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """x (b, l, width) attends to the text (b, heads, t, head_dim) where text_mask (b, t) (or, per
        query, (b, l, t)) is True."""
        query = rearrange(self.query(x), "b l (h d) -> b h l d", h=self.num_heads)
        scale = None
        if self.qk_norm is not None:
            query = self.qk_norm.scale_query(query)
            scale = 1.0
        dropout = self.attention_dropout if self.training else 0.0
        out = attention(query, text_keys, text_values, key_padding_mask(text_mask), scale, dropout, self.backend)
        return self.output_dropout(self.output(rearrange(out, "b h l d -> b l (h d)")))
