"""Concepts the bundled demo model has never seen, added to the synthetic portraits on request
(`--data.concepts hat`): each is an extra attribute, rendered as its own layer and named in the caption.

A concept draws from its own random stream, `np.random.default_rng([seed, index, stream])`, never from
the portrait's, so with the concepts off every render and caption is exactly what it was, and with them
on the person under the hat is the one the ordinary world draws at that index.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CONCEPTS: dict[str, tuple[str, ...]] = {"hat": ("no", "red", "blue", "green")}
"""Each concept's values; the first is its absence (not rendered, not named)."""

_STREAMS = {"hat": 1_000}
"""The third seed word of each concept's random stream (the zoom level's stream uses 3)."""

_HAT_PHRASES = ("wearing a {} hat", "with a {} hat", "in a {} hat")


def check_concepts(concepts: tuple[str, ...]) -> None:
    unknown = [name for name in concepts if name not in CONCEPTS]
    if unknown:
        raise ValueError(f"unknown concept(s) {unknown}; known: {list(CONCEPTS)}")


def draw_concepts(concepts: tuple[str, ...], seed: int, index: int, concept_items: int | None) -> dict[str, str]:
    """The concepts of item `index`: with `concept_items` N, items 0 .. N-1 carry each one (its colour drawn),
    the others not; with None every item carries it with probability 1/2."""
    drawn = {}
    for name in concepts:
        rng = np.random.default_rng([seed, index, _STREAMS[name]])
        present = index < concept_items if concept_items is not None else rng.random() < 0.5
        colour = str(rng.choice(CONCEPTS[name][1:]))  # drawn either way: the stream stays aligned
        drawn[name] = colour if present else CONCEPTS[name][0]
    return drawn


def concept_phrase(concepts: Mapping[str, str], rng: np.random.Generator | None = None) -> str:
    """The words naming the present concepts ("wearing a red hat"); canonical wording with rng=None."""
    hat = concepts.get("hat", "no")
    if hat == "no":
        return ""
    template = _HAT_PHRASES[int(rng.integers(len(_HAT_PHRASES)))] if rng is not None else _HAT_PHRASES[0]
    return template.format(hat)


def with_concepts(caption: str, concepts: Mapping[str, str], rng: np.random.Generator | None = None) -> str:
    """`caption` with the present concepts named at its end."""
    phrase = concept_phrase(concepts, rng)
    return f"{caption}, {phrase}" if phrase else caption


def item_concepts(concepts: tuple[str, ...], seed: int, index: int, concept_items: int | None
                  ) -> tuple[dict[str, str], np.random.Generator]:
    """`draw_concepts` and the generator that words their caption (a stream of its own)."""
    drawn = draw_concepts(concepts, seed, index, concept_items)
    return drawn, np.random.default_rng([seed, index, _STREAMS.get(concepts[0], 1_000) + 1])
