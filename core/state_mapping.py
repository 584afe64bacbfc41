"""Reading another project's state dict into ours: every key accounted for, every shape checked.

A converter takes the foreign tensors one by one from a `ForeignState` (`take`), declares the keys it
drops on purpose with a reason (`ignore`), and calls `finish`, which refuses any key nobody took: a
checkpoint with a part we do not model must fail loudly, never load with that part silently missing.
`check_state` then compares the converted dict with the target model's own state dict (which may live
on the meta device, so the largest models are checked without allocating them).

Shared by the tokenizer's and the transformer's converters (a foundation: it loads no model).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class ConversionError(ValueError):
    """A foreign state dict does not fit: unmapped keys, missing keys or wrong shapes (the message lists them)."""


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
        """The tensor under `key`, marked as used."""
        if key not in self.state:
            raise ConversionError(f"{self.source} has no {key!r}: it is not the checkpoint this converter reads")
        self.used.add(key)
        return self.state[key]

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
    problems = []
    if missing:
        problems.append(f"missing {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listing(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes (converted vs model) {_listing(mismatched)}")
    if problems:
        raise ConversionError(f"the converted {what} does not fit its model: " + "; ".join(problems))
