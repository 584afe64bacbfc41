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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from einops import repeat
from torch import nn

from nextscale.checkpoint import PretrainedMixin
from nextscale.scales import scale_index, scale_offsets
from nextscale.transformer.attention import KVCache, QKNorm
from nextscale.transformer.block import Block, modulate, per_token
from nextscale.transformer.config import TransformerConfig


@dataclass
class InferenceState:
    """Per-prompt state of scale-by-scale inference, made by `NextScaleTransformer.start`.

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
        # Added to a detail prompt's normalised text tokens where the layout prompt is seen beside it.
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
        long sampling runs, not for a few images (README "Performance" has the measurement)."""
        for block in self.blocks:
            block.compile(dynamic=True)
        return self

    # -- shared pieces of the teacher-forced and the incremental path --------------------------------

    def _check_text(
        self, text_tokens: torch.Tensor | None, text_mask: torch.Tensor | None, text_pooled: torch.Tensor | None
    ) -> None:
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
            self._check_text(text_tokens, text_mask, text_pooled)
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

    def _text_keys_values(
        self, text_tokens: torch.Tensor | None, marked: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Cross-attention keys and values of every block: 2 x depth x (b, heads, t, head_dim); `marked`
        (b,) bool adds the detail marker to those rows (a detail prompt seen beside the layout prompt,
        `layout_context`)."""
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
        other_texts: Sequence[Mapping[str, torch.Tensor]] = (),
        text_of_scale: torch.Tensor | None = None,
        layout_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits of every token of the first `num_scales` scales (default: all) under the
        block-causal mask.

        teacher_inputs (b, L' - scale_sizes[0]**2, latent_dim): the tokenizer's inputs for scales
        1..num_scales-1, L' = tokens of those scales. The condition: text_tokens (b, t, text_width),
        text_mask (b, t) bool, text_pooled (b, text_width) for a text model; labels (b,) long for a
        class-conditional one. Returns fp32 logits (b, L', vocab_size); position i predicts code i of
        the flat sequence. A prefix gives the same logits as the full pass (block causality).

        Per-scale conditions in one pass (text models): `other_texts` holds more texts (each a mapping
        of text_tokens, text_mask, text_pooled with b rows) and `text_of_scale` (b, >= num_scales) long
        the text of every scale of every image, 0 for the first text, i for other_texts[i - 1]. Scale 0
        takes the first text (its start token is the first condition). The tokens of a scale take their
        AdaLN modulation from their scale's condition and cross-attend to its text only, which is what
        the cached path computes when the condition changes between scales (`sample_scales` with one
        condition per scale). With `config.layout_context` the tokens of a scale whose text is not the
        first cross-attend to a layout text as well, their own marked as a detail prompt: the first text,
        as in sampling, or per image text `layout_text` (b,) long (training shows the scales before the
        switch the item's own caption and the later ones its layout caption beside its detail caption).
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
        text_keys, text_values = self._text_keys_values(text_tokens)
        x = self._embed(condition, teacher_inputs, 0, end)  # (b, L', width)
        mask = self.attention_mask(num_scales)  # (L', L') block-causal
        choice = None
        if other_texts or text_of_scale is not None:
            choice, condition, text_keys, text_values, text_mask = self._per_scale_texts(
                condition, text_keys, text_values, text_mask, other_texts, text_of_scale, num_scales, layout_text)
        for block, keys, values in zip(self.blocks, text_keys, text_values):
            x = block(x, condition, keys, values, text_mask, mask=mask, choice=choice)
        return self._logits(x, condition, choice)

    def _per_scale_texts(
        self,
        condition: torch.Tensor,
        text_keys: list[torch.Tensor | None],
        text_values: list[torch.Tensor | None],
        text_mask: torch.Tensor | None,
        other_texts: Sequence[Mapping[str, torch.Tensor]],
        text_of_scale: torch.Tensor | None,
        num_scales: int,
        layout_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None], list[torch.Tensor | None], torch.Tensor | None]:
        """Every text of a pass with per-scale conditions: (choice (b, L') long, the text of each token;
        conditions (b, c, width); the texts' keys and values side by side (b, heads, t_1 + ... + t_c,
        head_dim); a per-token text mask (b, L', t_1 + ... + t_c) letting each token see its own text,
        and with `layout_context`, after its image's switch, the layout text too)."""
        if self.class_embed is not None:
            raise ValueError("per-scale conditions in the teacher-forced pass need a text model")
        batch, count = condition.shape[0], 1 + len(other_texts)
        if text_of_scale is None or text_of_scale.dtype != torch.long or text_of_scale.ndim != 2 \
                or text_of_scale.shape[0] != batch or text_of_scale.shape[1] < num_scales:
            got = None if text_of_scale is None else f"{tuple(text_of_scale.shape)} {text_of_scale.dtype}"
            raise ValueError(f"other_texts need text_of_scale ({batch}, >= {num_scales}) int64, got {got}")
        text_of_scale = text_of_scale[:, :num_scales]
        if bool((text_of_scale[:, 0] != 0).any()):
            raise ValueError("scale 0 takes the first text (its start token is the first condition)")
        if bool(((text_of_scale < 0) | (text_of_scale >= count)).any()):
            raise ValueError(f"text_of_scale must be in [0, {count}) for {count} texts")
        others = [self.condition_vector(text.get("text_tokens"), text.get("text_mask"), text.get("text_pooled"))
                  for text in other_texts]
        if any(other.shape[0] != batch for other in others):
            raise ValueError(f"every text must hold {batch} rows, one per image")
        choice = torch.gather(text_of_scale, 1, self.level[: self.offsets[num_scales]].expand(batch, -1))  # (b, L')
        conditions = torch.stack([condition, *others], dim=1)  # (b, c, width)
        if self.text_norm is None:
            return choice, conditions, text_keys, text_values, text_mask
        assert text_mask is not None
        layout = self.config.layout_context
        if layout:
            if layout_text is None:
                layout_text = torch.zeros(batch, dtype=torch.long, device=choice.device)
            if layout_text.dtype != torch.long or tuple(layout_text.shape) != (batch,) \
                    or bool(((layout_text < 0) | (layout_text >= count)).any()):
                raise ValueError(f"layout_text must be ({batch},) int64 in [0, {count})")
            layout_text = layout_text.to(choice.device)
        keys, values, masks = [text_keys], [text_values], [text_mask]
        for index, text in enumerate(other_texts, start=1):
            # with layout_context a text is marked as detail in the rows where it is not the layout text
            marked = layout_text != index if layout_text is not None else None
            more_keys, more_values = self._text_keys_values(text["text_tokens"], marked=marked)
            keys.append(more_keys)
            values.append(more_values)
            masks.append(text["text_mask"])
        # token j sees the real tokens of its own text (and with layout_context, after a switch, the layout
        # text): (b, L', t_i) per text, side by side
        sees = [choice == index for index in range(count)]
        if layout_text is not None:
            is_layout = layout_text.unsqueeze(1)  # (b, 1)
            sees = [seen | ((choice > 0) & (is_layout == index)) for index, seen in enumerate(sees)]
        own = [mask.unsqueeze(1) & seen.unsqueeze(-1) for mask, seen in zip(masks, sees)]
        token_mask = torch.cat(own, dim=2)
        joined_keys = [torch.cat(per_text, dim=2) for per_text in zip(*keys)]
        joined_values = [torch.cat(per_text, dim=2) for per_text in zip(*values)]
        return choice, conditions, joined_keys, joined_values, token_mask  # type: ignore[return-value]

    # -- inference: one scale at a time with a KV cache ------------------------------------------------

    def start(
        self,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        layout: Mapping[str, torch.Tensor] | None = None,
        switched: torch.Tensor | None = None,
    ) -> InferenceState:
        """Encode the condition once (text or class labels): condition vector, per-block text keys/values,
        empty self-attention caches.

        Per-scale prompts with `config.layout_context`: `layout` holds the first prompt's text states (b
        rows) and `switched` (b,) bool the rows whose prompt differs from it; those rows cross-attend to
        the layout text and to this text marked as a detail prompt, the others to the layout text alone
        (the same prompt). Without `layout_context`, `layout` is ignored: every row sees this text."""
        condition = self.condition_vector(text_tokens, text_mask, text_pooled, labels)
        if layout is not None and self.config.layout_context:
            return self._start_with_layout(condition, text_tokens, text_mask, layout, switched)
        text_keys, text_values = self._text_keys_values(text_tokens)
        caches = [KVCache(self.config.num_tokens) for _ in self.blocks]
        return InferenceState(condition, text_mask, text_keys, text_values, caches)

    def _start_with_layout(self, condition: torch.Tensor, text_tokens: torch.Tensor | None,
                           text_mask: torch.Tensor | None, layout: Mapping[str, torch.Tensor],
                           switched: torch.Tensor | None) -> InferenceState:
        """Keys/values [layout text; this text marked] (b, heads, t_0 + t, head_dim) and the mask that shows
        the marked part to the `switched` rows only."""
        assert text_tokens is not None and text_mask is not None
        batch = condition.shape[0]
        if switched is None or switched.dtype != torch.bool or tuple(switched.shape) != (batch,):
            got = None if switched is None else f"{tuple(switched.shape)} {switched.dtype}"
            raise ValueError(f"a layout text needs switched ({batch},) bool, the rows whose prompt differs; got {got}")
        self._check_text(layout.get("text_tokens"), layout.get("text_mask"), layout.get("text_pooled"))
        layout_keys, layout_values = self._text_keys_values(layout["text_tokens"])
        own_keys, own_values = self._text_keys_values(
            text_tokens, marked=torch.ones(batch, dtype=torch.bool, device=text_tokens.device))
        keys = [torch.cat(pair, dim=2) for pair in zip(layout_keys, own_keys)]  # type: ignore[arg-type]
        values = [torch.cat(pair, dim=2) for pair in zip(layout_values, own_values)]  # type: ignore[arg-type]
        mask = torch.cat([layout["text_mask"], text_mask & switched.to(text_mask.device).unsqueeze(1)], dim=1)
        caches = [KVCache(self.config.num_tokens) for _ in self.blocks]
        return InferenceState(condition, mask, keys, values, caches)  # type: ignore[arg-type]

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
