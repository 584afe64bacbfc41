"""The next-scale transformer (VAR: Tian et al. 2024, "Visual Autoregressive Modeling"), text- or class-conditioned.

All token maps of an image form one sequence of L tokens, coarse to fine. Position i of scale k
predicts the code of token i of scale k; its input is the start token (scale 0) or the tokenizer's
teacher-forcing input for scale k (the accumulated reconstruction of scales < k, area-downsampled to
scale k's size). Training sees every scale in one pass under the block-causal mask; sampling runs scale
by scale with a KV cache (`start` + `forward_scale`), and both paths give the same logits.

Conditioning: the pooled text embedding is projected to the condition vector (a class-conditional model
looks its label up in a table with one extra row, the null class, as VAR's `class_emb`), which (a) is
the start token and (b) modulates every block by adaptive LayerNorm (block.py). The text tokens enter by
cross-attention in every block; class-conditional models have no cross-attention.

A different text per scale (per-scale prompts, and the layout context of `TransformerConfig.layout_context`)
lives in per_scale.py: it plugs into `forward` as its `per_scale` argument and into the cached path as
`start_after_switch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from einops import repeat
from torch import nn

from nextscale.checkpoint import PretrainedMixin
from nextscale.scales import scale_index, scale_offsets
from nextscale.transformer.attention import KVCache, QKNorm
from nextscale.transformer.block import Block, modulate, per_token
from nextscale.transformer.config import TransformerConfig

if TYPE_CHECKING:
    from nextscale.transformer.per_scale import PerScaleTexts


@dataclass
class Conditioning:
    """What the blocks and the head read beside the tokens of a teacher-forced pass: the AdaLN condition
    and the text to cross-attend to. One condition per image; per-scale texts (per_scale.py) stack one
    row per text and name each token's row in `choice`."""

    condition: torch.Tensor  # (b, width), or (b, c, width) with `choice`
    text_keys: list[torch.Tensor | None]  # per block (b, heads, t, head_dim); None without cross-attention
    text_values: list[torch.Tensor | None]
    text_mask: torch.Tensor | None  # (b, t) bool, or per token (b, L', t) with `choice`
    choice: torch.Tensor | None = None  # (b, L') long: the row of `condition` of every token


@dataclass
class InferenceState:
    """Per-prompt state of scale-by-scale inference, made by `NextScaleTransformer.start` (or after a prompt
    switch by `per_scale.start_after_switch`).

    Holds the condition vector, the text keys/values of every block (computed once per prompt) and one
    self-attention `KVCache` per block; `next_scale` is the scale `forward_scale` expects next.
    Memory: self-attention 2 * depth * b * L * width * bytes, text 2 * depth * b * t * width * bytes.
    """

    condition: torch.Tensor  # (b, width)
    text_mask: torch.Tensor | None  # (b, t) bool, None without cross-attention
    text_keys: list[torch.Tensor | None]  # per block (b, heads, t, head_dim)
    text_values: list[torch.Tensor | None]
    caches: list[KVCache]
    next_scale: int = 0

    @property
    def batch_size(self) -> int:
        return self.condition.shape[0]

    @property
    def num_bytes(self) -> int:
        """Bytes held by the self-attention caches and the text keys/values."""
        text = sum(t.nbytes for t in (*self.text_keys, *self.text_values) if t is not None)
        return text + sum(cache.num_bytes for cache in self.caches)


class NextScaleTransformer(nn.Module, PretrainedMixin):
    """Predicts the codes of every scale from coarser scales and the condition: text, or a class label (VAR)."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        width, length = config.width, config.num_tokens
        # The condition vector (AdaLN condition and start token): text_pooled projected, or a class embedding
        # with row num_classes for the null class.
        self.condition = None if config.class_conditional else nn.Linear(config.text_width, width)
        self.class_embed = nn.Embedding(config.num_classes + 1, width) if config.class_conditional else None
        self.text_norm = nn.LayerNorm(config.text_width, eps=config.norm_eps) if config.cross_attention else None
        # Per-scale prompts with layout_context (per_scale.py): added to a detail prompt's normalised text
        # tokens where the layout prompt is seen beside it.
        self.detail_marker = nn.Parameter(torch.zeros(config.text_width)) if config.layout_context else None
        self.input_embed = nn.Linear(config.latent_dim, width)  # teacher-forcing inputs of scales 1..K-1
        self.position_embed = nn.Parameter(torch.empty(1, length, width))
        self.level_embed = nn.Embedding(config.num_scales, width)
        self.blocks = nn.ModuleList(
            Block(config, config.drop_path * index / max(config.depth - 1, 1)) for index in range(config.depth)
        )
        self.head_norm = nn.LayerNorm(width, elementwise_affine=False, eps=config.norm_eps)
        self.head_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.head = nn.Linear(width, config.vocab_size)
        self.register_buffer("level", scale_index(config.scale_sizes), persistent=False)  # (L,)
        self.offsets = scale_offsets(config.scale_sizes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VAR's init (Tian et al. 2024, `init_weights`): truncated normal, residual outputs scaled by
        depth (GPT-2), zero AdaLN modulation so every block starts as the identity (adaLN-Zero), a
        small head so the first predictions are near uniform."""
        std = self.config.resolved_init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, QKNorm):
                nn.init.constant_(module.log_scale, math.log(4.0))
        nn.init.trunc_normal_(self.position_embed, std=std, a=-2 * std, b=2 * std)
        if self.detail_marker is not None:
            nn.init.zeros_(self.detail_marker)  # a marked prompt starts as the same prompt unmarked
        residual_branches = (3 if self.config.cross_attention else 2) * self.config.depth
        for block in self.blocks:
            outputs = [block.self_attention.output, block.mlp.fc2]
            if block.cross_attention is not None:
                outputs.append(block.cross_attention.output)
            for output in outputs:
                output.weight.data.div_(math.sqrt(residual_branches))
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.head_modulation[-1].weight)
        nn.init.zeros_(self.head_modulation[-1].bias)
        self.head.weight.data.mul_(self.config.head_init_scale)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def compile_blocks(self) -> NextScaleTransformer:
        """`torch.compile` every block (shape-dynamic, so the scales' growing token and key counts share
        one graph); returns self. The first call pays the compilation (minutes on a CPU): it pays for
        long sampling runs, not for a few images (docs/experiments/performance-suite-cpu.md)."""
        for block in self.blocks:
            block.compile(dynamic=True)
        return self

    # -- shared pieces of the teacher-forced and the incremental path --------------------------------

    def check_text(
        self, text_tokens: torch.Tensor | None, text_mask: torch.Tensor | None, text_pooled: torch.Tensor | None
    ) -> None:
        """Checks the text states of a text model: text_pooled (b, text_width), and with cross-attention
        text_tokens (b, t, text_width) with a bool text_mask (b, t) holding a real token in every row."""
        width = self.config.text_width
        if text_pooled is None or text_pooled.ndim != 2 or text_pooled.shape[1] != width:
            got = None if text_pooled is None else tuple(text_pooled.shape)
            raise ValueError(f"this model is text-conditioned: text_pooled must be (b, {width}), got {got}")
        if not self.config.cross_attention:
            return
        if text_tokens is None or text_mask is None:
            raise ValueError("this model cross-attends to text: pass text_tokens and text_mask")
        batch = text_pooled.shape[0]
        if text_tokens.ndim != 3 or text_tokens.shape[0] != batch or text_tokens.shape[2] != width:
            raise ValueError(f"text_tokens must be ({batch}, t, {width}), got {tuple(text_tokens.shape)}")
        if text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(f"text_mask must be {tuple(text_tokens.shape[:2])}, got {tuple(text_mask.shape)}")
        if text_mask.dtype != torch.bool:
            raise TypeError(f"text_mask must be bool (True = real token), got {text_mask.dtype}; use mask.bool()")
        if not bool(text_mask.any(dim=1).all()):
            raise ValueError("every row of text_mask needs a real token (even the empty prompt has one)")

    def condition_vector(
        self,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The condition (b, width) from the pooled text (b, text_width) or the class labels (b,) long, where
        label `num_classes` is the null class. Checks that the model's kind of condition was given."""
        if self.class_embed is None:
            if labels is not None:
                raise ValueError("this model is text-conditioned: pass text, not class labels")
            self.check_text(text_tokens, text_mask, text_pooled)
            assert self.condition is not None and text_pooled is not None
            return self.condition(text_pooled)
        if text_tokens is not None or text_mask is not None or text_pooled is not None:
            raise ValueError("this model is class-conditional: pass labels, not text")
        num_classes = self.config.num_classes
        if labels is None or labels.ndim != 1 or labels.dtype != torch.long:
            got = None if labels is None else f"{tuple(labels.shape)} {labels.dtype}"
            raise ValueError(f"this model is class-conditional: labels must be (b,) int64, got {got}")
        if labels.numel() and not bool(((labels >= 0) & (labels <= num_classes)).all()):
            raise ValueError(f"labels must be in [0, {num_classes}] ({num_classes} is the null class), got {labels}")
        return self.class_embed(labels)

    def text_keys_values(
        self, text_tokens: torch.Tensor | None, marked: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Cross-attention keys and values of every block: 2 x depth x (b, heads, t, head_dim); `marked`
        (b,) bool adds the detail marker to those rows (a detail prompt seen beside the layout prompt,
        per_scale.py)."""
        if self.text_norm is None or text_tokens is None:
            return [None] * len(self.blocks), [None] * len(self.blocks)
        text = self.text_norm(text_tokens)
        if marked is not None:
            assert self.detail_marker is not None
            text = text + self.detail_marker * marked.to(text.dtype).view(-1, 1, 1)
        keys, values = zip(*(block.cross_attention.text_keys_values(text) for block in self.blocks))
        return list(keys), list(values)

    def _embed(self, condition: torch.Tensor, inputs: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
        """Input tokens of positions [start, end) (b, end - start, width): the start token on the first
        scale (the condition, as VAR's class embedding), linearly embedded teacher inputs after, plus the
        position and level embeddings (VAR Sec. 3.2)."""
        parts = []
        if start == 0:
            parts.append(repeat(condition, "b d -> b n d", n=self.offsets[1]))
        if inputs is not None and inputs.shape[1] > 0:
            parts.append(self.input_embed(inputs))
        x = torch.cat(parts, dim=1)
        return x + self.position_embed[:, start:end] + self.level_embed(self.level[start:end])

    def _logits(
        self, x: torch.Tensor, condition: torch.Tensor, choice: torch.Tensor | None = None
    ) -> torch.Tensor:
        """AdaLN final norm + linear head: (b, l, width) -> fp32 logits (b, l, vocab_size)."""
        shift, scale = per_token(self.head_modulation(condition), choice).chunk(2, dim=-1)  # (b, 1 | l, width)
        return self.head(modulate(self.head_norm(x), shift, scale)).float()

    def attention_mask(self, num_scales: int | None = None) -> torch.Tensor:
        """Block-causal mask (L', L') of the first `num_scales` scales, True where a query may attend a key.

        Built on demand for the teacher-forced pass only: sampling runs scale by scale against the KV cache
        and needs no mask, so no L x L tensor exists at inference.
        """
        end = self.offsets[self.config.num_scales if num_scales is None else num_scales]
        level = self.level[:end]  # (L',)
        return level[None, :] <= level[:, None]  # same rule as scales.block_causal_mask

    # -- training: all scales in one teacher-forced pass ---------------------------------------------

    def forward(
        self,
        teacher_inputs: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        num_scales: int | None = None,
        labels: torch.Tensor | None = None,
        per_scale: PerScaleTexts | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits of every token of the first `num_scales` scales (default: all) under the
        block-causal mask.

        teacher_inputs (b, L' - scale_sizes[0]**2, latent_dim): the tokenizer's inputs for scales
        1..num_scales-1, L' = tokens of those scales. The condition: text_tokens (b, t, text_width),
        text_mask (b, t) bool, text_pooled (b, text_width) for a text model; labels (b,) long for a
        class-conditional one. Returns fp32 logits (b, L', vocab_size); position i predicts code i of
        the flat sequence. A prefix gives the same logits as the full pass (block causality).

        `per_scale` (per_scale.PerScaleTexts) gives the scales of each image their own texts, the text
        above being the first one (scale 0's); None conditions every scale on it.
        """
        condition = self.condition_vector(text_tokens, text_mask, text_pooled, labels)  # (b, width)
        num_scales = self.config.num_scales if num_scales is None else num_scales
        if not 1 <= num_scales <= self.config.num_scales:
            raise ValueError(f"num_scales must be in [1, {self.config.num_scales}], got {num_scales}")
        end = self.offsets[num_scales]
        expected = (condition.shape[0], end - self.offsets[1], self.config.latent_dim)
        if tuple(teacher_inputs.shape) != expected:
            raise ValueError(
                f"teacher_inputs must be {expected} (batch, tokens of scales 1.., latent_dim), "
                f"got {tuple(teacher_inputs.shape)}"
            )
        conditioning = Conditioning(condition, *self.text_keys_values(text_tokens), text_mask)
        if per_scale is not None:  # every token takes its own scale's text
            conditioning = per_scale.conditioning(self, conditioning, num_scales)
        x = self._embed(condition, teacher_inputs, 0, end)  # (b, L', width); the start token is the first condition
        mask = self.attention_mask(num_scales)  # (L', L') block-causal
        condition, choice = conditioning.condition, conditioning.choice  # (b, width) | (b, c, width), (b, L')
        for block, keys, values in zip(self.blocks, conditioning.text_keys, conditioning.text_values):
            x = block(x, condition, keys, values, conditioning.text_mask, mask=mask, choice=choice)
        return self._logits(x, condition, choice)

    # -- inference: one scale at a time with a KV cache ------------------------------------------------

    def start(
        self,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> InferenceState:
        """Encode the condition once (text or class labels): condition vector, per-block text keys/values,
        empty self-attention caches. (After a prompt switch: per_scale.start_after_switch.)"""
        condition = self.condition_vector(text_tokens, text_mask, text_pooled, labels)
        text_keys, text_values = self.text_keys_values(text_tokens)
        caches = [KVCache(self.config.num_tokens) for _ in self.blocks]
        return InferenceState(condition, text_mask, text_keys, text_values, caches)

    def forward_scale(
        self, state: InferenceState, scale: int, scale_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (b, s*s, vocab_size) of scale `scale` (s = scale_sizes[scale]); scales go in order.

        `scale_inputs` is None for scale 0 and the tokenizer's teacher-forcing input of this scale,
        (b, s*s, latent_dim), afterwards. The new tokens' keys/values join the cache and the tokens attend
        to every cached one (all earlier scales and their own), which is the block-causal mask's row.
        """
        if not 0 <= scale < self.config.num_scales:
            raise ValueError(f"scale must be in [0, {self.config.num_scales}), got {scale}")
        if scale != state.next_scale:
            raise ValueError(
                f"forward_scale got scale {scale}, but the cache holds scales < {state.next_scale}: run the "
                "scales in order 0, 1, ... and call start() again for a new image"
            )
        start, end = self.offsets[scale], self.offsets[scale + 1]
        if scale == 0 and scale_inputs is not None:
            raise ValueError("scale 0 is predicted from the start token: pass scale_inputs=None")
        expected = (state.batch_size, end - start, self.config.latent_dim)
        if scale > 0 and (scale_inputs is None or tuple(scale_inputs.shape) != expected):
            got = None if scale_inputs is None else tuple(scale_inputs.shape)
            raise ValueError(f"scale_inputs of scale {scale} must be {expected}, got {got}")
        x = self._embed(state.condition, scale_inputs, start, end)  # (b, s*s, width)
        for block, cache, keys, values in zip(self.blocks, state.caches, state.text_keys, state.text_values):
            x = block(x, state.condition, keys, values, state.text_mask, cache=cache)
        state.next_scale += 1
        return self._logits(x, state.condition)
