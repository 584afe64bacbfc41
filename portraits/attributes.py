"""The synthetic portraits' attributes: their values, how they are drawn, and which ones each zoom level shows.

A portrait's attributes (gender, beard, glasses, hair colour and length, skin, background, smile) are
known by construction, so a judge can score prompt adherence against the attributes asked for.
"""

from __future__ import annotations

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": ("man", "woman"),
    "beard": ("yes", "no"),
    "glasses": ("yes", "no"),
    "hair_color": ("black", "brown", "blond", "red", "grey"),
    "hair_length": ("short", "long"),
    "skin": ("light", "medium", "dark"),
    "background": ("blue", "green", "red", "yellow", "purple", "grey"),
    "smile": ("yes", "no"),
}

# Zoom levels: level z shows the centre 1/z of the portrait (side and area), rendered natively.
ZOOM_LEVELS: tuple[int, ...] = (1, 2, 4)

# What each level shows: the whole portrait at 1x; at 2x the face with the top of the hair, long hair
# falling beside the cheeks and background in the corners (everything); at 4x eyes, brows, nose, mouth
# and the middle of the cheeks and jaw. At 4x the background and long hair show at most as slivers in
# the corners (about 1% and 2% of the pixels on average), and the hair colour only in the brows (often
# under glasses rims) and the top corners: not readable on every portrait, so not counted as visible.
_VISIBLE: dict[int, tuple[str, ...]] = {
    1: tuple(ATTRIBUTES),
    2: tuple(ATTRIBUTES),
    4: ("gender", "beard", "glasses", "skin", "smile"),
}


def visible_attributes(level: int) -> tuple[str, ...]:
    """The attributes a portrait seen at zoom `level` (1, 2 or 4) shows, in the order of `ATTRIBUTES`."""
    if level not in _VISIBLE:
        raise ValueError(f"zoom level must be one of {ZOOM_LEVELS}, got {level}")
    return _VISIBLE[level]


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Draw one portrait's attributes; beards only on men, long hair mostly on women."""
    gender = "man" if rng.random() < 0.5 else "woman"
    long_hair_probability = 0.8 if gender == "woman" else 0.2
    return {
        "gender": gender,
        "beard": "yes" if gender == "man" and rng.random() < 0.5 else "no",
        "glasses": "yes" if rng.random() < 0.4 else "no",
        "hair_color": str(rng.choice(ATTRIBUTES["hair_color"])),
        "hair_length": "long" if rng.random() < long_hair_probability else "short",
        "skin": str(rng.choice(ATTRIBUTES["skin"])),
        "background": str(rng.choice(ATTRIBUTES["background"])),
        "smile": "yes" if rng.random() < 0.5 else "no",
    }
