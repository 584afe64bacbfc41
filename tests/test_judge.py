"""Attribute judge: shapes, save/load, augmentation, a tiny training run and the tokenizer check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import tyro

from nextscale.portraits.attributes import ATTRIBUTES
from nextscale.portraits.judge import (
    AttributeJudge,
    AugmentationConfig,
    JudgeConfig,
    attribute_accuracy,
    attribute_indices,
    attribute_loss,
    augment,
    format_judge_metrics,
    render_portraits,
)
from nextscale.portraits.train_judge import JudgeTrainConfig, train_judge
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig

TINY = JudgeConfig(image_size=32, channels=(8, 16, 32), pooled_size=4, feature_dim=32)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(batch: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def tiny_judge() -> AttributeJudge:
    torch.manual_seed(0)
    return AttributeJudge(TINY).eval()


def test_config_names_the_synthetic_attributes():
    assert dict(zip(TINY.attribute_names, TINY.attribute_values)) == ATTRIBUTES
    with pytest.raises(ValueError, match="pooled_size"):
        JudgeConfig(image_size=32, channels=(8, 16, 32, 64), pooled_size=4)


def test_shapes():
    judge, batch = tiny_judge(), images()
    logits = judge(batch)
    assert list(logits) == list(ATTRIBUTES)
    assert all(logits[name].shape == (3, len(values)) for name, values in ATTRIBUTES.items())
    assert judge.features(batch).shape == (3, TINY.feature_dim)
    predictions = judge.predict(batch)
    assert len(predictions) == 3
    assert all(prediction[name] in values for prediction in predictions for name, values in ATTRIBUTES.items())
    with pytest.raises(ValueError, match="resize"):
        judge(images(size=16))


def test_save_load_bit_exact(tmp_path: Path):
    judge, batch = tiny_judge(), images()
    judge.save_pretrained(tmp_path / "judge")
    loaded = AttributeJudge.from_pretrained(tmp_path / "judge")
    assert loaded.config == judge.config
    for name, logits in judge(batch).items():
        assert torch.equal(loaded(batch)[name], logits)
    assert torch.equal(loaded.features(batch), judge.features(batch))


def test_indices_and_accuracy_skip_missing_attributes():
    targets = attribute_indices([{"gender": "woman", "glasses": "yes"}, {"gender": "man"}], TINY)
    assert targets[0, 0] == 1 and targets[0, 2] == 0 and targets[1, 2] == -1
    predicted = torch.zeros_like(targets)
    accuracy = attribute_accuracy(predicted, targets, TINY.attribute_names)
    assert accuracy["gender"] == 0.5 and accuracy["glasses"] == 1.0 and accuracy["smile"] == 0.0


def test_zoomed_labels_and_loss_score_only_visible_attributes():
    _, labels = render_portraits(0, 12, 32, TINY, zoom_levels=(4,))
    hidden = [TINY.attribute_names.index(name) for name in ("background", "hair_color", "hair_length")]
    assert (labels[:, hidden] == -1).all() and (labels[:, [0, 1, 2, 5, 7]] >= 0).all()
    logits = {name: torch.randn(2, len(values), generator=torch.Generator().manual_seed(a))
              for a, (name, values) in enumerate(ATTRIBUTES.items())}
    targets = torch.tensor([[0] * len(ATTRIBUTES), [1] * len(ATTRIBUTES)])
    targets[:, 6] = -1  # background scored nowhere: left out, not NaN
    targets[1, 3] = -1  # hair colour scored on the first image only
    expected = [torch.nn.functional.cross_entropy(logits[name][:1] if name == "hair_color" else logits[name],
                                                  targets[:1, a] if name == "hair_color" else targets[:, a])
                for a, name in enumerate(ATTRIBUTES) if name != "background"]
    assert torch.allclose(attribute_loss(logits, targets, list(ATTRIBUTES)), torch.stack(expected).mean())


def test_zoom_training_reports_every_level_and_starts_from_a_judge(tmp_path: Path, one_thread: None):
    tiny_judge().save_pretrained(tmp_path / "start")
    config = JudgeTrainConfig(output_dir=str(tmp_path / "judge"), steps=2, batch_size=8, model=TINY, train_pool=32,
                              eval_images=16, zoom_levels=(1, 2, 4), init_from=str(tmp_path / "start"),
                              learning_rate=1e-12, weight_decay=0.0, tracker="none")
    judge, metrics = train_judge(config)
    assert set(metrics["levels"]) == {"1", "2", "4"}
    assert set(metrics["levels"]["4"]["accuracy_real"]) == {"gender", "beard", "glasses", "skin", "smile"}
    assert metrics["accuracy_real"] == metrics["levels"]["1"]["accuracy_real"]
    assert "zoom 4x" in format_judge_metrics(metrics)
    batch = images()
    for name, logits in tiny_judge()(batch).items():  # a vanishing learning rate: the starting weights
        assert logits.shape == judge(batch)[name].shape
    start = AttributeJudge.from_pretrained(tmp_path / "start").state_dict()
    assert all(torch.allclose(value, judge.state_dict()[key], atol=1e-6)
               for key, value in start.items() if "weight" in key)
    with pytest.raises(ValueError, match="zoom_levels"):
        JudgeTrainConfig(output_dir="x", zoom_levels=(3,))


def test_augment_is_identity_when_off_and_reproducible_when_on():
    batch = images(4)
    off = AugmentationConfig(max_blur_sigma=0.0, max_noise_std=0.0, brightness=0.0, contrast=0.0, max_shift=0)
    assert torch.allclose(augment(batch, off, torch.Generator()), batch, atol=1e-6)
    first = augment(batch, AugmentationConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(first, augment(batch, AugmentationConfig(), torch.Generator().manual_seed(3)))
    assert first.shape == batch.shape and first.abs().max() <= 1 and not torch.allclose(first, batch, atol=1e-2)


def test_tiny_training_learns(tmp_path: Path, one_thread: None):
    config = JudgeTrainConfig(output_dir=str(tmp_path / "judge"), steps=300, batch_size=32, learning_rate=3e-3,
                              model=TINY, train_pool=512, eval_images=128, tracker="none")
    judge, metrics = train_judge(config)
    losses = [loss for _, loss in metrics["loss_curve"]]
    assert losses[-1] < 0.7 * losses[0], losses
    accuracy = metrics["accuracy_real"]
    assert accuracy["background"] > 0.6 and accuracy["hair_color"] > 0.45, accuracy  # chance: 0.17 and 0.2
    assert json.loads((tmp_path / "judge" / "metrics.json").read_text())["accuracy_real"] == accuracy
    assert AttributeJudge.from_pretrained(tmp_path / "judge" / "model").config == judge.config


def test_tokenizer_check_path(tmp_path: Path, one_thread: None):
    torch.manual_seed(0)
    tokenizer_config = TokenizerConfig(image_size=32, latent_dim=8, vocab_size=64, scale_sizes=(1, 2, 4), num_phi=3,
                                       channel_mult=(1, 2, 2, 2), encoder_channels=16, decoder_channels=16,
                                       decoder_res_blocks=1, norm_groups=8)
    MultiScaleVQVAE(tokenizer_config).save_pretrained(tmp_path / "tokenizer")
    config = JudgeTrainConfig(output_dir=str(tmp_path / "judge"), tokenizer=str(tmp_path / "tokenizer"), steps=5,
                              batch_size=8, model=TINY, train_pool=32, reconstruction_pool=16, eval_images=16,
                              tracker="none")
    _, metrics = train_judge(config)
    for key in ("accuracy_real", "accuracy_reconstruction", "agreement"):
        assert set(metrics[key]) == set(ATTRIBUTES)
        assert all(0.0 <= value <= 1.0 for value in metrics[key].values())
    table = format_judge_metrics(metrics)
    assert "recon" in table and "agree" in table and "background" in table
    mismatched = JudgeTrainConfig(output_dir=str(tmp_path / "other"), tokenizer=str(tmp_path / "tokenizer"), steps=1,
                                  tracker="none")
    with pytest.raises(ValueError, match="image-size"):
        train_judge(mismatched)


def test_cli_parses_the_documented_command():
    args = ["--output-dir", "x", "--tokenizer", "runs/tokenizer/model", "--steps", "7"]
    config = tyro.cli(JudgeTrainConfig, args=args)
    assert (config.output_dir, config.tokenizer, config.steps, config.model) == ("x", "runs/tokenizer/model", 7,
                                                                                 JudgeConfig())
