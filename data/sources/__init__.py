"""The registry of data sources: each module in this folder (or named in `PLUGIN_SOURCES`) registers one,
so a new source is one file.

A source turns a `DataConfig` into a dataset whose items are at least `{"image": (3, S, S) float in
[-1, 1], "caption": str}` (map-style items add `"index"`, a source its own fields), and says what its
held-out split is. Modules here are imported on first use of the registry.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nextscale.data.badinput import BadInput

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from nextscale.data.config import DataConfig


@dataclass(frozen=True)
class Source:
    """One way to read training data."""

    name: str
    build: Callable[[DataConfig, bool], Dataset]
    """(config, shuffle) -> dataset; `shuffle` matters only to iterable sources."""
    needs_path: bool = True
    """Whether `DataConfig.path` must be set."""
    held_out: Callable[[DataConfig], DataConfig] | None = None
    """The config of a built-in held-out split, or None when the source has none."""


_SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add a source to the registry (called at import by the modules of this folder)."""
    if source.name in _SOURCES and _SOURCES[source.name] != source:
        raise ValueError(f"two data sources are named {source.name!r}")
    _SOURCES[source.name] = source
    return source


PLUGIN_SOURCES = ("nextscale.portraits.source",)
"""Sources that live outside this package, each module registering one on import (the synthetic portraits
belong to their own world, `nextscale.portraits`); named here so the generic data never imports them."""


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for name in PLUGIN_SOURCES:
        importlib.import_module(name)


def source_names() -> tuple[str, ...]:
    """Names of every registered source."""
    _discover()
    return tuple(sorted(_SOURCES))


def record_caption(record: object) -> str:
    """The caption of one metadata record (a `metadata.jsonl` line, a WebDataset sample's json): its `text`,
    else its `caption`, "" when it has neither. The one rule of every source: a record that is not a JSON
    object, or whose caption is not a string (null, a number, a list, an object), is bad metadata
    (BadInput "bad_metadata"): the source counts it and does not use its caption."""
    if not isinstance(record, dict):
        raise BadInput("bad_metadata", f"expected a JSON object, got {type(record).__name__}")
    caption = record.get("text", record.get("caption", ""))
    if not isinstance(caption, str):
        field = "text" if "text" in record else "caption"
        raise BadInput("bad_metadata", f"its {field} is not a string: {json.dumps(caption)[:80]}")
    return caption


def get_source(name: str) -> Source:
    """The source registered as `name`, or a ValueError listing the known ones."""
    if name not in _SOURCES:
        _discover()
    if name not in _SOURCES:
        raise ValueError(f"unknown data source {name!r}; choose one of {', '.join(source_names())}")
    return _SOURCES[name]
