"""`TransformerConfig`: the shape of the next-scale transformer, with presets.

Presets (a runbook per preset, as big_vision does):

- `TransformerConfig.preset("tiny")`: width 64, depth 2. Unit tests; trains in seconds on a CPU.
- `TransformerConfig.preset("demo")`: width 256, depth 6, 4 heads, 9.6M parameters. The offline demo
  on the synthetic portraits (64 px, 130 tokens); `python -m bench --sections training` measures its
  training speed on your machine.
- `TransformerConfig.var(depth=16)`: VAR's family (Tian et al. 2024, Sec. 4): width = 64 * depth,
  heads = depth, drop path 0.1 * depth / 24, l2-normalised queries and keys without a key bias;
  depth 16 without cross-attention has VAR-d16's 310M parameters; cross-attention to CLIP-L text
  (text_width 768) makes it 369M. `TransformerConfig.var(16, num_classes=1000, cross_attention=False)`
  is the official ImageNet VAR-d16 (what `convert_var` builds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from nextscale.scales import scale_offsets, total_tokens, validate_scale_sizes

AttentionBackend = Literal["sdpa", "xformers", "naive"]
ATTENTION_BACKENDS = ("sdpa", "xformers", "naive")


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of `NextScaleTransformer`; saved as its `config.json`."""

    depth: int = 2
    """Number of transformer blocks."""
    width: int = 64
    """Model width (embedding size of every token)."""
    num_heads: int = 4
    """Attention heads; `width` must be divisible by it."""
    mlp_ratio: float = 4.0
    """Hidden width of the MLP as a multiple of `width`."""
    scale_sizes: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    """Side of each token map, coarse to fine; must match the tokenizer's."""
    vocab_size: int = 1024
    """Size of the tokenizer's shared codebook (number of output logits)."""
    latent_dim: int = 32
    """Width of the tokenizer's teacher-forcing inputs (its latent channels)."""
    text_width: int = 384
    """Width of the text encoder's token and pooled embeddings (384 for MiniLM, 768 for CLIP-L)."""
    num_classes: int = 0
    """0: text-conditioned; N > 0: class labels 0..N-1 plus a null class N for guidance (VAR's ImageNet)."""
    cross_attention: bool = True
    """Cross-attend to the text tokens in every block; False conditions on the pooled text only."""
    layout_context: bool = False
    """Per-scale prompts: the scales after a prompt switch cross-attend to the first prompt (the layout
    prompt) beside their own, which carries a learned detail marker, so they can keep what the layout
    prompt says (trained by `train_var --mixing`). Off: they see their own prompt only."""
    dropout: float = 0.0
    """Dropout on the outputs of attention and MLP."""
    attention_dropout: float = 0.0
    """Dropout on the attention probabilities (training only)."""
    drop_path: float = 0.0
    """Stochastic depth rate of the last block, linear from 0 (Huang et al. 2016; VAR uses it)."""
    qk_norm: bool = False
    """L2-normalise queries and keys with a learned per-head scale (VAR's `attn_l2_norm` stabiliser)."""
    key_bias: bool = True
    """Learn a bias for the self-attention keys; VAR has none (its `zero_k_bias`), which matters with qk_norm."""
    attention_backend: AttentionBackend = "sdpa"
    """`sdpa` (PyTorch), `xformers` (CUDA only, falls back to sdpa) or `naive` (reference)."""
    init_std: float = 0.0
    """Std of the truncated-normal init; 0 means VAR's width-based sqrt(1 / (3 * width))."""
    head_init_scale: float = 0.02
    """The output head's init is multiplied by this, so the first logits are near uniform (VAR)."""
    norm_eps: float = 1e-6
    """Epsilon of every LayerNorm."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_sizes", validate_scale_sizes(self.scale_sizes))
        for name in ("depth", "width", "num_heads", "vocab_size", "latent_dim", "text_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.width % self.num_heads:
            divisors = [h for h in range(1, self.width + 1) if self.width % h == 0 and h <= 64]
            raise ValueError(
                f"width {self.width} is not divisible by num_heads {self.num_heads}: pick num_heads in "
                f"{divisors} or a width that is a multiple of {self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ("dropout", "attention_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = text-conditioned), got {self.num_classes}")
        if self.layout_context and not self.cross_attention:
            raise ValueError("layout_context adds a prompt to the cross-attention: it needs cross_attention=True")
        if self.num_classes and self.cross_attention:
            raise ValueError(
                f"num_classes={self.num_classes} makes a class-conditional model, which has no text to "
                "cross-attend to: set cross_attention=False"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if self.init_std < 0 or self.head_init_scale < 0:
            raise ValueError("init_std and head_init_scale must be >= 0 (init_std 0 = width-based default)")

    @property
    def class_conditional(self) -> bool:
        """True when the condition is a class label (`num_classes` > 0), False for text."""
        return self.num_classes > 0

    @property
    def null_class(self) -> int:
        """The label of the unconditional (guidance) branch of a class-conditional model."""
        return self.num_classes

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.width // self.num_heads

    @property
    def num_scales(self) -> int:
        """Number of token maps (levels) in the pyramid."""
        return len(self.scale_sizes)

    @property
    def num_tokens(self) -> int:
        """Length L of the flat sequence of all scales, e.g. 130 for (1, 2, 3, 4, 6, 8)."""
        return total_tokens(self.scale_sizes)

    @property
    def first_scale_tokens(self) -> int:
        """Tokens of the first scale: they are predicted from the start token(s), not teacher inputs."""
        return scale_offsets(self.scale_sizes)[1]

    @property
    def resolved_init_std(self) -> float:
        """The init std actually used (VAR: sqrt(1 / (3 * width)) unless set)."""
        return self.init_std or math.sqrt(1.0 / (3.0 * self.width))

    @classmethod
    def var(cls, depth: int = 16, **overrides: Any) -> TransformerConfig:
        """VAR's scaling rule (Tian et al. 2024, Sec. 4): width 64 * depth, depth heads of 64, and its
        attention: l2-normalised queries and keys (`attn_l2_norm`), no key bias."""
        settings: dict[str, Any] = dict(
            depth=depth, width=64 * depth, num_heads=depth, drop_path=0.1 * depth / 24, qk_norm=True, key_bias=False
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TransformerConfig:
        """One of `PRESETS` ("tiny", "demo"), with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)} or use TransformerConfig.var")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, TransformerConfig] = {
    # Tests: a few thousand steps per minute on a CPU.
    "tiny": TransformerConfig(depth=2, width=64, num_heads=4),
    # Offline demo: 9.6M parameters (with text_width 384); heads of 64 like VAR.
    "demo": TransformerConfig(depth=6, width=256, num_heads=4),
}
