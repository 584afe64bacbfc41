"""Reading another project's state dict into ours: every key accounted for, every shape, dtype and value checked.

A converter takes the foreign tensors one by one from a `ForeignState` (`take`), declares the keys it
drops on purpose with a reason (`ignore`), and calls `finish`, which refuses any key nobody took: a
checkpoint with a part we do not model must fail loudly, never load with that part silently missing.
A floating-point tensor taken must hold no NaN. `check_state` then compares the converted dict with the
target model's own state dict (which may live on the meta device, so the largest models are checked
without allocating them): names, shapes, the kind of dtype (an integer tensor where a float weight
belongs is refused) and finiteness.

Shared by the tokenizer's and the transformer's converters (a foundation: it loads no model).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class ConversionError(ValueError):
    """A foreign state dict does not fit: unmapped, missing, mis-shaped, mis-typed or non-finite tensors (the
    message lists them)."""


def _non_finite(tensor: torch.Tensor, nan_only: bool = False) -> int:
    """How many values of a floating-point tensor are NaN or infinite (`nan_only`: NaN), 0 for other dtypes
    and meta tensors."""
    if not tensor.is_floating_point() or tensor.device.type == "meta":
        return 0
    return int(torch.isnan(tensor).sum() if nan_only else (~torch.isfinite(tensor)).sum())


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class ForeignState:
    """A foreign state dict consumed key by key; `source` names it in error messages."""

    def __init__(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        self.state = dict(state)
        self.source = source
        self.used: set[str] = set()
        self.ignored: dict[str, str] = {}

    def has(self, key: str) -> bool:
        return key in self.state

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of `key` without consuming it (to infer the architecture)."""
        if key not in self.state:
            raise ConversionError(f"{self.source} has no {key!r}: it is not the checkpoint this converter reads")
        return tuple(self.state[key].shape)

    def count(self, pattern: str) -> int:
        """How many of `pattern.format(0)`, `pattern.format(1)`, ... exist, counting up from 0."""
        index = 0
        while pattern.format(index) in self.state:
            index += 1
        return index

    def take(self, key: str) -> torch.Tensor:
        """The tensor under `key`, marked as used; a floating-point one must hold no NaN."""
        if key not in self.state:
            raise ConversionError(f"{self.source} has no {key!r}: it is not the checkpoint this converter reads")
        self.used.add(key)
        tensor = self.state[key]
        nan = _non_finite(tensor, nan_only=True)  # infinities may be meant (a mask's -inf); check_state sees them
        if nan:
            raise ConversionError(f"{self.source}: {key} is not finite ({nan} NaN values of {tensor.numel()}): the "
                                  "checkpoint is damaged; use an intact copy")
        return tensor

    def ignore(self, key: str, reason: str) -> None:
        """Drop `key` on purpose (e.g. a training statistic or a buffer we recompute); `reason` is recorded."""
        if key in self.state:
            self.used.add(key)
            self.ignored[key] = reason

    def finish(self) -> None:
        """Refuse the checkpoint if any key was neither taken nor ignored."""
        left = sorted(set(self.state) - self.used)
        if left:
            raise ConversionError(
                f"{self.source} has {len(left)} key(s) this converter does not map: {_listing(left)}. "
                "The checkpoint holds parts nextscale does not model; refusing to drop them silently."
            )


def check_state(converted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a ConversionError naming every missing, unexpected or mis-shaped key of `converted` against
    the target model's state dict `target`."""
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    mismatched = [
        f"{key} {tuple(converted[key].shape)} vs {tuple(target[key].shape)}"
        for key in target
        if key in converted and tuple(converted[key].shape) != tuple(target[key].shape)
    ]
    kinds = [
        f"{key} is {converted[key].dtype} where the model holds {target[key].dtype} (floating point: "
        f"{target[key].is_floating_point()})"
        for key in target
        if key in converted and converted[key].is_floating_point() != target[key].is_floating_point()
    ]
    non_finite = [key for key in target if key in converted and _non_finite(converted[key])]
    problems = []
    if kinds:
        problems.append(f"wrong dtypes {_listing(kinds)}")
    if non_finite:
        problems.append(f"not finite (NaN or infinite values) {_listing(non_finite)}")
    if missing:
        problems.append(f"missing {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listing(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes (converted vs model) {_listing(mismatched)}")
    if problems:
        raise ConversionError(f"the converted {what} does not fit its model: " + "; ".join(problems))
