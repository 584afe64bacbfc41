"""A new concept (the hat) added to the synthetic portraits changes nothing when it is off and nothing but
its own layer and words when it is on."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from nextscale.data import DataConfig
from nextscale.portraits.concepts import CONCEPTS, draw_concepts
from nextscale.portraits.judge import JudgeConfig, render_portraits, with_concept_heads
from nextscale.portraits.source import SyntheticConfig, SyntheticPortraits

ORDINARY_WORLD_SHA256 = "624e93e807191d2993ebf8dbe9efaf44328017cdfdbd55e9369bfa69aa49af95"
"""Renders, captions and attributes of items 0, 7, ..., 63 of seeds 0 and 1_000_003, as before the concepts."""


def world_digest(dataset: SyntheticPortraits) -> str:
    digest = hashlib.sha256()
    for index in range(0, 64, 7):
        item = dataset[index]
        digest.update(item["image"].numpy().tobytes())
        digest.update(item["caption"].encode())
        digest.update(json.dumps(item["attributes"], sort_keys=True).encode())
    return digest.hexdigest()


def test_the_ordinary_world_is_unchanged():
    digest = hashlib.sha256()
    for seed in (0, 1_000_003):
        digest.update(world_digest(SyntheticPortraits(SyntheticConfig(seed=seed, length=64))).encode())
    assert digest.hexdigest() == ORDINARY_WORLD_SHA256


def test_a_hat_adds_its_layer_and_words_and_nothing_else():
    plain = SyntheticPortraits(SyntheticConfig(length=64))
    hats = SyntheticPortraits(SyntheticConfig(length=64, concepts=("hat",), concept_items=16))
    for index in range(0, 64, 5):
        ordinary, item = plain[index], hats[index]
        if index >= 16:  # no hat: the very same item
            assert torch.equal(ordinary["image"], item["image"]) and ordinary["caption"] == item["caption"]
            assert item["attributes"] == {**ordinary["attributes"], "hat": "no"}
            continue
        colour = item["attributes"]["hat"]
        assert colour in CONCEPTS["hat"][1:] and item["caption"].startswith(ordinary["caption"] + ", ")
        assert item["caption"].endswith(f"{colour} hat")
        changed = (ordinary["image"] != item["image"]).any(0)
        rows = changed.any(1).nonzero().flatten()
        assert 0 < len(rows) and rows.max() < 40  # the hat sits on the head: the face below it is untouched
    assert draw_concepts(("hat",), 0, 3, None) == draw_concepts(("hat",), 0, 3, None)


def test_the_concept_is_a_data_option_of_the_synthetic_source_only():
    assert DataConfig(concepts=("hat",), concept_items=64).concepts == ("hat",)
    with pytest.raises(ValueError, match="unknown concept"):
        SyntheticConfig(concepts=("scarf",))
    with pytest.raises(ValueError, match="synthetic source only"):
        DataConfig(source="folder", path="x", concepts=("hat",))


def test_the_judge_gets_a_head_per_concept_with_labels():
    config = with_concept_heads(JudgeConfig(), ("hat",))
    assert config.attribute_names[-1] == "hat" and config.attribute_values[-1] == CONCEPTS["hat"]
    images, labels = render_portraits(5, 16, 64, config, concepts=("hat",))
    assert images.shape == (16, 3, 64, 64) and labels.shape == (16, len(config.attribute_names))
    assert set(np.unique(labels[:, -1].numpy())) <= set(range(len(CONCEPTS["hat"]))) and labels[:, -1].min() >= 0
