"""Conditions: prompts -> the transformer's text states, computed once and reused by the scale loop.

A `Condition` holds the text states of a batch (b conditional rows, then b rows of the empty prompt ""
when guidance needs them), ready to feed `NextScaleTransformer.start`; for a class-conditional
transformer it holds class labels instead (b labels, then b rows of the null class, VAR's unconditional
branch). It is built once per batch of
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

    prompts: tuple[str, ...] | tuple[int, ...]
    """The b prompts (or class labels), one per image."""
    text: dict[str, torch.Tensor]
    """text_tokens (rows, t, d), text_mask (rows, t) bool, text_pooled (rows, d); or labels (rows,) long
    for a class-conditional transformer; rows = 2b or b."""
    unconditional: bool
    """Whether the empty-prompt rows are present (needed by classifier-free guidance)."""

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def rows(self, count: int) -> dict[str, torch.Tensor]:
        """The text states of the first `count` rows (b: conditional only; 2b: with the "" rows)."""
        if count > 2 * self.batch_size or (count > self.batch_size and not self.unconditional):
            rows = next(iter(self.text.values())).shape[0]
            raise ValueError(f"this condition holds {rows} rows, {count} requested")
        return {name: tensor[:count] for name, tensor in self.text.items()}


def _encode_distinct(pipeline: Pipeline, prompts: Sequence[str], dtype: torch.dtype
                     ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Encode each distinct prompt once: (states with one row per distinct prompt, prompt -> row)."""
    distinct = list(dict.fromkeys(prompts))
    states = pipeline.text_encoder.encode(distinct).as_dict()
    states = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in states.items()}
    return states, {prompt: row for row, prompt in enumerate(distinct)}


def _class_states(pipeline: Pipeline, labels: Sequence[int]) -> tuple[dict[str, torch.Tensor], dict[int, int]]:
    """Class labels as condition states: one row per distinct label plus the null class (keyed "")."""
    config = pipeline.transformer.config
    bad = [label for label in labels if label != "" and not 0 <= int(label) < config.num_classes]
    if bad:
        raise ValueError(f"class labels must be in [0, {config.num_classes}), got {bad}")
    distinct = list(dict.fromkeys(labels))
    values = [config.null_class if label == "" else int(label) for label in distinct]
    states = {"labels": torch.tensor(values, dtype=torch.long, device=pipeline.device)}
    return states, {label: row for row, label in enumerate(distinct)}


def _gather(states: dict[str, torch.Tensor], index: dict[str, int], prompts: Sequence[str],
            unconditional: bool) -> Condition:
    order = [index[prompt] for prompt in prompts]
    if unconditional:
        order += [index[""]] * len(prompts)
    rows = torch.tensor(order)
    text = {name: tensor[rows.to(tensor.device)] for name, tensor in states.items()}
    return Condition(tuple(prompts), text, unconditional)


def build_condition(pipeline: Pipeline, prompts: Sequence[str] | Sequence[int], unconditional: bool = True,
                    dtype: torch.dtype | None = None) -> Condition:
    """The condition of a batch of prompts; `unconditional` adds the "" rows guidance needs.

    `dtype` defaults to the transformer's; every distinct prompt is encoded once.
    """
    return scale_conditions(pipeline, [prompts], unconditional, dtype)[0]


def scale_conditions(pipeline: Pipeline, prompts_per_scale: Sequence[Sequence[str]] | Sequence[Sequence[int]],
                     unconditional: bool = True,
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
    class_model = pipeline.transformer.config.class_conditional
    given = [item for prompts in prompts_per_scale for item in prompts]
    if class_model != all(isinstance(item, int) and not isinstance(item, bool) for item in given):
        wanted = "class labels (ints)" if class_model else "text prompts"
        raise ValueError(f"this pipeline's transformer is conditioned on {wanted}, got {given[:4]}")
    dtype = dtype or next(pipeline.transformer.parameters()).dtype
    every = given + ([""] if unconditional else [])  # "": the empty prompt, or the null class
    states, index = _class_states(pipeline, every) if class_model else _encode_distinct(pipeline, every, dtype)
    conditions: dict[tuple[str, ...], Condition] = {}
    for prompts in prompts_per_scale:
        key = tuple(prompts)
        if key not in conditions:
            conditions[key] = _gather(states, index, key, unconditional)
    return [conditions[tuple(prompts)] for prompts in prompts_per_scale]
