"""Per-scale prompts: the scales of an image conditioned on different texts, and the layout context.

Next-scale prediction lets the condition change between scales: the coarse scales follow one prompt
(the layout) and the finer ones another (the detail). The cached path switches by starting a new
`InferenceState` at the switch and keeping the caches of the earlier scales (`start_after_switch`); the
teacher-forced pass does it in one go (`PerScaleTexts`, the `per_scale` argument of
`NextScaleTransformer.forward`): every token takes its AdaLN modulation from its scale's text and
cross-attends to that text only, which is what the cached path computes.

With `TransformerConfig.layout_context` the scales after a switch see the layout prompt beside their
own, which carries the model's learned detail marker, so they can keep what the layout prompt says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from nextscale.transformer.attention import KVCache
from nextscale.transformer.model import Conditioning, InferenceState, NextScaleTransformer


@dataclass
class PerScaleTexts:
    """The texts of a teacher-forced pass beyond the first one (text models only).

    `other_texts` holds more texts, each a mapping of text_tokens, text_mask, text_pooled with b rows;
    `text_of_scale` (b, >= num_scales) long names the text of every scale of every image: 0 for the
    pass's own text, i for other_texts[i - 1]. Scale 0 takes text 0 (its start token is the first
    condition). With `layout_context`, the tokens of a scale whose text is not 0 cross-attend to a
    layout text as well, their own marked as a detail prompt: text 0, as in sampling, or per image text
    `layout_text` (b,) long (training shows the scales before the switch the item's own caption and the
    later ones its layout caption beside its detail caption).
    """

    other_texts: Sequence[Mapping[str, torch.Tensor]]
    text_of_scale: torch.Tensor | None
    layout_text: torch.Tensor | None = None

    def conditioning(self, model: NextScaleTransformer, first: Conditioning, num_scales: int) -> Conditioning:
        """Every text of the pass, from the first text's `first` (one condition per image): the conditions
        (b, c, width), choice (b, L') long the text of each token, the texts' keys and values side by side
        (b, heads, t_1 + ... + t_c, head_dim) and a per-token text mask (b, L', t_1 + ... + t_c) letting
        each token see its own text (and with `layout_context`, after its image's switch, the layout text)."""
        if model.class_embed is not None:
            raise ValueError("per-scale conditions in the teacher-forced pass need a text model")
        batch, count = first.condition.shape[0], 1 + len(self.other_texts)
        text_of_scale = checked_text_of_scale(self.text_of_scale, batch, count, num_scales)
        others = [model.condition_vector(text.get("text_tokens"), text.get("text_mask"), text.get("text_pooled"))
                  for text in self.other_texts]
        if any(other.shape[0] != batch for other in others):
            raise ValueError(f"every text must hold {batch} rows, one per image")
        level = model.level[: model.offsets[num_scales]]  # (L',) the scale of every token
        choice = torch.gather(text_of_scale, 1, level.expand(batch, -1))  # (b, L')
        conditions = torch.stack([first.condition, *others], dim=1)  # (b, c, width)
        if model.text_norm is None:
            return Conditioning(conditions, first.text_keys, first.text_values, first.text_mask, choice)
        assert first.text_mask is not None
        layout_text = self.checked_layout_text(model, batch, count, choice.device)
        keys, values, masks = [first.text_keys], [first.text_values], [first.text_mask]
        for index, text in enumerate(self.other_texts, start=1):
            # with layout_context a text is marked as detail in the rows where it is not the layout text
            marked = layout_text != index if layout_text is not None else None
            more_keys, more_values = model.text_keys_values(text["text_tokens"], marked=marked)
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
        joined_keys = [torch.cat(per_text, dim=2) for per_text in zip(*keys)]  # type: ignore[arg-type]
        joined_values = [torch.cat(per_text, dim=2) for per_text in zip(*values)]  # type: ignore[arg-type]
        return Conditioning(conditions, joined_keys, joined_values, token_mask, choice)  # type: ignore[arg-type]

    def checked_layout_text(self, model: NextScaleTransformer, batch: int, count: int,
                            device: torch.device) -> torch.Tensor | None:
        """The layout text of every image (b,) long (text 0 unless given); None without `layout_context`."""
        if not model.config.layout_context:
            return None
        layout_text = self.layout_text
        if layout_text is None:
            layout_text = torch.zeros(batch, dtype=torch.long, device=device)
        if layout_text.dtype != torch.long or tuple(layout_text.shape) != (batch,) \
                or bool(((layout_text < 0) | (layout_text >= count)).any()):
            raise ValueError(f"layout_text must be ({batch},) int64 in [0, {count})")
        return layout_text.to(device)


def checked_text_of_scale(text_of_scale: torch.Tensor | None, batch: int, count: int, num_scales: int) -> torch.Tensor:
    """`text_of_scale` of the first `num_scales` scales (b, num_scales), checked against `count` texts."""
    if text_of_scale is None or text_of_scale.dtype != torch.long or text_of_scale.ndim != 2 \
            or text_of_scale.shape[0] != batch or text_of_scale.shape[1] < num_scales:
        got = None if text_of_scale is None else f"{tuple(text_of_scale.shape)} {text_of_scale.dtype}"
        raise ValueError(f"other_texts need text_of_scale ({batch}, >= {num_scales}) int64, got {got}")
    text_of_scale = text_of_scale[:, :num_scales]
    if bool((text_of_scale[:, 0] != 0).any()):
        raise ValueError("scale 0 takes the first text (its start token is the first condition)")
    if bool(((text_of_scale < 0) | (text_of_scale >= count)).any()):
        raise ValueError(f"text_of_scale must be in [0, {count}) for {count} texts")
    return text_of_scale


def start_after_switch(model: NextScaleTransformer, text: Mapping[str, torch.Tensor],
                       layout: Mapping[str, torch.Tensor], switched: torch.Tensor | None) -> InferenceState:
    """The inference state of the scales after a prompt switch, with empty caches (the caller keeps the
    earlier scales' caches): `text` is the new condition (text states or labels, b rows).

    With `layout_context`, `layout` holds the first prompt's text states (b rows) and `switched` (b,) bool
    the rows whose prompt differs from it; those rows cross-attend to the layout text and to this text
    marked as a detail prompt, the others to the layout text alone (the same prompt). Without
    `layout_context` every row sees this text alone: `model.start(**text)`."""
    if not model.config.layout_context:
        return model.start(**text)
    text_tokens, text_mask = text.get("text_tokens"), text.get("text_mask")
    condition = model.condition_vector(text_tokens, text_mask, text.get("text_pooled"), text.get("labels"))
    assert text_tokens is not None and text_mask is not None
    batch = condition.shape[0]
    if switched is None or switched.dtype != torch.bool or tuple(switched.shape) != (batch,):
        got = None if switched is None else f"{tuple(switched.shape)} {switched.dtype}"
        raise ValueError(f"a layout text needs switched ({batch},) bool, the rows whose prompt differs; got {got}")
    model.check_text(layout.get("text_tokens"), layout.get("text_mask"), layout.get("text_pooled"))
    # keys/values [layout text; this text marked] (b, heads, t_0 + t, head_dim); the marked part is shown
    # to the switched rows only
    layout_keys, layout_values = model.text_keys_values(layout["text_tokens"])
    own_keys, own_values = model.text_keys_values(
        text_tokens, marked=torch.ones(batch, dtype=torch.bool, device=text_tokens.device))
    keys = [torch.cat(pair, dim=2) for pair in zip(layout_keys, own_keys)]  # type: ignore[arg-type]
    values = [torch.cat(pair, dim=2) for pair in zip(layout_values, own_values)]  # type: ignore[arg-type]
    mask = torch.cat([layout["text_mask"], text_mask & switched.to(text_mask.device).unsqueeze(1)], dim=1)
    caches = [KVCache(model.config.num_tokens) for _ in model.blocks]
    return InferenceState(condition, mask, keys, values, caches)  # type: ignore[arg-type]
