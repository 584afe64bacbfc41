"""Conditions: prompts -> the transformer's text states, computed once and reused by the scale loop.

A `Condition` holds the text states of a batch (b conditional rows, then b rows of the empty prompt ""
when guidance needs them), ready to feed `NextScaleTransformer.start`. It is built once per batch of
prompts, and can be built ahead of time and reused across calls (a UI keeps it while the user tweaks
seeds). Per-scale prompts give one condition per scale; `scale_conditions` encodes every distinct
prompt (and "") ONCE in a single text-encoder call and gathers the rows each scale needs; scales that
share a prompt list share the same `Condition` object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nextscale.sampling.pipeline import Pipeline


@dataclass(frozen=True)
class Condition:
    """Text states of one batch: rows 0..b-1 are the prompts, rows b..2b-1 (if `unconditional`) are ""."""

    prompts: tuple[str, ...]
    """The b prompts, one per image."""
    text: dict[str, torch.Tensor]
    """text_tokens (rows, t, d), text_mask (rows, t) bool, text_pooled (rows, d); rows = 2b or b."""
    unconditional: bool
    """Whether the empty-prompt rows are present (needed by classifier-free guidance)."""

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def rows(self, count: int) -> dict[str, torch.Tensor]:
        """The text states of the first `count` rows (b: conditional only; 2b: with the "" rows)."""
        if count > 2 * self.batch_size or (count > self.batch_size and not self.unconditional):
            raise ValueError(f"this condition holds {self.text['text_pooled'].shape[0]} rows, {count} requested")
        return {name: tensor[:count] for name, tensor in self.text.items()}


def _encode_distinct(pipeline: Pipeline, prompts: Sequence[str], dtype: torch.dtype
                     ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Encode each distinct prompt once: (states with one row per distinct prompt, prompt -> row)."""
    distinct = list(dict.fromkeys(prompts))
    states = pipeline.text_encoder.encode(distinct).as_dict()
    states = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in states.items()}
    return states, {prompt: row for row, prompt in enumerate(distinct)}


def _gather(states: dict[str, torch.Tensor], index: dict[str, int], prompts: Sequence[str],
            unconditional: bool) -> Condition:
    order = [index[prompt] for prompt in prompts]
    if unconditional:
        order += [index[""]] * len(prompts)
    rows = torch.tensor(order)
    text = {name: tensor[rows.to(tensor.device)] for name, tensor in states.items()}
    return Condition(tuple(prompts), text, unconditional)


def build_condition(pipeline: Pipeline, prompts: Sequence[str], unconditional: bool = True,
                    dtype: torch.dtype | None = None) -> Condition:
    """The condition of a batch of prompts; `unconditional` adds the "" rows guidance needs.

    `dtype` defaults to the transformer's; every distinct prompt is encoded once.
    """
    return scale_conditions(pipeline, [prompts], unconditional, dtype)[0]


def scale_conditions(pipeline: Pipeline, prompts_per_scale: Sequence[Sequence[str]], unconditional: bool = True,
                     dtype: torch.dtype | None = None) -> list[Condition]:
    """One condition per entry of `prompts_per_scale` (each a list of b prompts), from ONE encoder call.

    Entries with the same prompts get the same `Condition` object, so the loop sees where they change.
    """
    if not prompts_per_scale:
        raise ValueError("no prompts given")
    batch = len(prompts_per_scale[0])
    if batch == 0 or any(len(prompts) != batch for prompts in prompts_per_scale):
        raise ValueError(f"every scale needs the same number of prompts (one per image), got "
                         f"{[len(prompts) for prompts in prompts_per_scale]}")
    dtype = dtype or next(pipeline.transformer.parameters()).dtype
    every = [prompt for prompts in prompts_per_scale for prompt in prompts] + ([""] if unconditional else [])
    states, index = _encode_distinct(pipeline, every, dtype)
    conditions: dict[tuple[str, ...], Condition] = {}
    for prompts in prompts_per_scale:
        key = tuple(prompts)
        if key not in conditions:
            conditions[key] = _gather(states, index, key, unconditional)
    return [conditions[tuple(prompts)] for prompts in prompts_per_scale]
