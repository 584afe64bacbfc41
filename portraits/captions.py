"""Captions of the synthetic portraits: exact descriptions for evaluation, partial varied ones for training."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from nextscale.portraits.attributes import ATTRIBUTES, visible_attributes

_BACKGROUND_PHRASES = ("on a {} background", "against a {} background", "in front of a {} wall",
                       ", {} background")
# Prefixes by zoom level, the canonical one first. Level 1 never says "close-up" (that names level 2)
# and levels 2 and 4 always say what they show, so a prompt without a level phrase means the 1x view.
_PREFIXES = {
    1: ("", "a photo of ", "a portrait of ", "portrait of ", "a picture of ", "a headshot of ", "a photograph of "),
    2: ("a close-up of the face of ", "close-up of the face of ", "a close-up photo of the face of ",
        "a close-up of "),
    4: ("an extreme close-up of the eyes of ", "extreme close-up of the eyes of ",
        "an extreme close-up photo of the eyes of ", "an extreme close-up of "),
}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_from_attributes(attributes: Mapping[str, str], rng: np.random.Generator | None = None,
                            level: int = 1) -> str:
    """Describe exactly the given (possibly partial) attributes of a portrait seen at zoom `level` in English.

    With `rng=None` the wording is one fixed canonical template (deterministic: what evaluation prompts
    use), e.g. {"beard": "yes"} -> "a man with a beard", {"hair_color": "red"} -> "a person with red
    hair"; levels 2 and 4 add "a close-up of the face of " and "an extreme close-up of the eyes of ".
    With an rng the wording, the order and the prefix vary. A woman's absent beard is never mentioned
    (it is implied). Naming an attribute the level does not show (`visible_attributes`) is an error.
    """
    visible = visible_attributes(level)
    for key, value in attributes.items():
        if value not in ATTRIBUTES.get(key, ()):
            raise ValueError(f"unknown attribute {key}={value!r}; known: {ATTRIBUTES}")
        if key not in visible:
            raise ValueError(f"{key} is not visible at zoom level {level} (visible: {', '.join(visible)})")

    def pick(*options: str) -> str:
        return options[int(rng.integers(len(options)))] if rng is not None else options[0]

    def sometimes(probability: float) -> bool:  # canonical wording: never
        return rng is not None and rng.random() < probability

    gender = attributes.get("gender")
    adjectives: list[str] = []  # before the noun
    with_items: list[str] = []  # "with a, b and c"
    without_items: list[str] = []

    def describe(adjective: str | None, phrases: tuple[str, ...], adjective_chance: float,
                 canonical_adjective: bool = False, negative: bool = False) -> None:
        """Add one attribute, as an adjective before the noun or as a phrase after it."""
        if adjective and (sometimes(adjective_chance) if rng is not None else canonical_adjective):
            adjectives.append(adjective)
        else:
            (without_items if negative else with_items).append(pick(*phrases))

    smile, beard, glasses = attributes.get("smile"), attributes.get("beard"), attributes.get("glasses")
    if smile == "yes":
        describe("smiling", ("a big smile", "a wide smile"), 0.6, canonical_adjective=True)
    elif smile == "no":
        describe("serious", ("a neutral expression", "a closed mouth"), 0.5, canonical_adjective=True)
    if beard == "yes":
        describe("bearded", ("a beard", "a full beard"), 0.4)
    elif beard == "no" and gender != "woman":
        describe("clean-shaven", ("without a beard",), 0.5, canonical_adjective=True, negative=True)
    if glasses == "yes":
        describe("bespectacled", ("glasses", "eyeglasses"), 0.15)
    elif glasses == "no":
        describe(None, ("without glasses", "with no glasses"), 0.0, negative=True)
    hair = " ".join(attributes[k] for k in ("hair_length", "hair_color") if k in attributes)
    if hair:  # "red-haired", never "long red-haired"
        describe(None if " " in hair else f"{hair}-haired", (f"{hair} hair",), 0.25)
    if "skin" in attributes:
        skin = attributes["skin"]
        describe(None if skin == "medium" else f"{skin}-skinned", (f"{skin} skin",), 0.3)

    if rng is not None:
        with_items = [with_items[i] for i in rng.permutation(len(with_items))]
    noun = gender or ("man" if beard == "yes" else "person")
    words = " ".join([*adjectives, noun])
    caption = ("an " if words[0] in "aeiou" else "a ") + words
    if with_items:
        caption += " with " + _join(with_items)
    if without_items:
        caption += (", " if with_items and sometimes(0.5) else " ") + " and ".join(without_items)
    if "background" in attributes:
        template = pick(*_BACKGROUND_PHRASES)
        caption += ("" if template.startswith(",") else " ") + template.format(attributes["background"])
    return pick(*_PREFIXES[level]) + caption


# Probability that a training caption mentions an attribute, by (attribute, value) or attribute: the
# most visible attributes often, absences rarely, so the model learns from partial descriptions.
_MENTION = {("gender", "man"): 0.9, ("gender", "woman"): 0.9, ("beard", "yes"): 0.85, ("beard", "no"): 0.15,
            ("glasses", "yes"): 0.8, ("glasses", "no"): 0.2, ("smile", "yes"): 0.6, ("smile", "no"): 0.25,
            "hair_color": 0.6, "hair_length": 0.45, "skin": 0.45, "background": 0.6}


COARSE_ATTRIBUTES: tuple[str, ...] = ("background", "hair_color", "skin")
"""The attributes the coarse scales settle (large areas of one colour), against the fine ones (glasses,
beard, smile...): what a layout prompt decides and a detail prompt may not change."""


def detail_caption(attributes: Mapping[str, str], rng: np.random.Generator, level: int = 1) -> str:
    """A second training caption for the scales after a switch (mixing regularisation): the portrait's fine
    attributes, mentioned as `sample_caption` mentions them, and one or more coarse attributes visible at
    `level` stated wrongly. Trained on it, the fine scales learn to follow a detail prompt's fine attributes
    and to keep the coarse ones the earlier scales' codes already show."""
    visible = visible_attributes(level)
    attributes = {k: v for k, v in attributes.items() if k in visible}
    fine = {k: v for k, v in attributes.items()
            if k not in COARSE_ATTRIBUTES and rng.random() < _MENTION.get((k, v), _MENTION.get(k))}
    coarse = [k for k in COARSE_ATTRIBUTES if k in attributes]
    fine.update(_stated_wrongly(attributes, _at_least_one(coarse, lambda key: 0.5, rng), rng))
    return caption_from_attributes(fine, rng, level)


def _at_least_one(keys: list[str], chance: Callable[[str], float], rng: np.random.Generator) -> list[str]:
    """Each key with probability chance(key); one drawn uniformly when none was (none when keys is empty)."""
    chosen = [key for key in keys if rng.random() < chance(key)]
    if not chosen and keys:
        chosen = [keys[int(rng.integers(len(keys)))]]
    return chosen


def _stated_wrongly(attributes: Mapping[str, str], keys: list[str], rng: np.random.Generator) -> dict[str, str]:
    """For each key, a value other than the portrait's, drawn uniformly."""
    wrong = {}
    for key in keys:
        others = [value for value in ATTRIBUTES[key] if value != attributes[key]]
        wrong[key] = others[int(rng.integers(len(others)))]
    return wrong


DETAIL_ATTRIBUTES: tuple[str, ...] = ("beard", "glasses", "smile")
"""The fine attributes a detail prompt changes and a layout caption states wrongly (mixing with layout context)."""


def layout_caption(attributes: Mapping[str, str], rng: np.random.Generator, level: int = 1) -> str:
    """The first training caption of a mixed item, as a layout prompt: its coarse attributes visible at
    `level` (at least one) and the other attributes but the detail ones mentioned as `sample_caption`
    mentions them, and one or more detail attributes (`DETAIL_ATTRIBUTES`; a beard for men only) stated
    wrongly, the others not mentioned. With `detail_caption` for the later scales, a model that sees both
    prompts there (`TransformerConfig.layout_context`) learns coarse attributes from the first and detail
    attributes from the second."""
    visible = visible_attributes(level)
    attributes = {k: v for k, v in attributes.items() if k in visible}
    coarse = [k for k in COARSE_ATTRIBUTES if k in attributes]
    mentioned = {k: v for k, v in attributes.items() if k not in DETAIL_ATTRIBUTES and k not in COARSE_ATTRIBUTES
                 and rng.random() < _MENTION.get((k, v), _MENTION.get(k))}
    mentioned.update({k: attributes[k] for k in _at_least_one(coarse, _MENTION.__getitem__, rng)})
    flippable = [k for k in DETAIL_ATTRIBUTES
                 if k in attributes and (k != "beard" or attributes.get("gender") == "man")]
    mentioned.update(_stated_wrongly(attributes, _at_least_one(flippable, lambda key: 0.5, rng), rng))
    return caption_from_attributes(mentioned, rng, level)


def sample_caption(attributes: Mapping[str, str], rng: np.random.Generator, level: int = 1) -> str:
    """A training caption of a portrait seen at zoom `level`: a random subset of the attributes visible
    there (all of them 10% of the time), varied wording."""
    visible = visible_attributes(level)
    attributes = {k: v for k, v in attributes.items() if k in visible}
    if rng.random() < 0.1:
        return caption_from_attributes(attributes, rng, level)
    mentioned = {k: v for k, v in attributes.items() if rng.random() < _MENTION.get((k, v), _MENTION.get(k))}
    return caption_from_attributes(mentioned, rng, level)
