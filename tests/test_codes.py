"""Tokens worth predicting: the plain lookup and the code-predictability measurements."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_tokenizer_config
from PIL import Image

from nextscale.eval.codes import CodeStatistics, cell_contrast, entropy, parent_cells, parent_codes
from nextscale.eval.tokenizer import evaluate_tokenizer, format_tokenizer_metrics
from nextscale.tokenizer import MultiScaleVQVAE


def tiny(**overrides: object) -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(tiny_tokenizer_config(**overrides))


def images(batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_default_config_behaves_as_before():
    """The default lookup is the plain cosine one over the embedding."""
    model = tiny()
    weight = model.quantizer.embedding.weight
    vectors = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    expected = (torch.nn.functional.normalize(vectors, dim=-1) @ torch.nn.functional.normalize(weight, dim=-1).t())
    assert torch.equal(model.quantizer.lookup(vectors), expected.argmax(-1))


def test_parent_cells_contain_the_centre():
    assert parent_cells(2, 1).tolist() == [0, 0]
    assert parent_cells(4, 2).tolist() == [0, 0, 1, 1]
    assert parent_cells(6, 4).tolist() == [0, 1, 1, 2, 3, 3]  # centres 0.33, 1.0, 1.67, 2.33, 3.0, 3.67
    assert parent_cells(8, 6).tolist() == [0, 1, 1, 2, 3, 4, 4, 5]
    coarse = torch.arange(4).view(1, 2, 2)
    assert parent_codes(coarse, 4).tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]]


def test_cell_contrast_is_the_pixel_std_per_cell():
    image = torch.zeros(1, 3, 8, 8)
    image[:, :, :4, :4] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]]).repeat(2, 2)  # std 1 in the top-left cell
    flatness = cell_contrast(image, 2)
    torch.testing.assert_close(flatness, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))


def test_entropy_given_the_parent_is_low_when_the_parent_decides():
    """Codes that copy the parent are predictable from it; independent codes are not."""
    generator = torch.Generator().manual_seed(0)
    stats = {"copy": CodeStatistics((2, 4), 16), "independent": CodeStatistics((2, 4), 16)}
    for _ in range(20):
        coarse = torch.randint(0, 16, (32, 2, 2), generator=generator)
        pictures = torch.zeros(32, 3, 8, 8)
        stats["copy"].update(pictures, [coarse, parent_codes(coarse, 4)])
        stats["independent"].update(pictures, [coarse, torch.randint(0, 16, (32, 4, 4), generator=generator)])
    copy, independent = stats["copy"].summary()[1], stats["independent"].summary()[1]
    assert copy["conditional_entropy"] < 0.1 < math.log(16) - 0.1 < copy["entropy"]
    assert independent["conditional_entropy"] > math.log(16) - 0.1
    assert copy["flat_fraction"] == 1.0 and copy["textured_distinct"] == 0
    assert entropy(torch.tensor([5, 5, 0])) == pytest.approx(math.log(2))


def test_flat_cells_are_counted_apart():
    stats = CodeStatistics((1, 2), 8)
    pictures = torch.zeros(2, 3, 8, 8)
    pictures[:, :, :4, :4] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]]).repeat(2, 2)
    codes = [torch.zeros(2, 1, 1, dtype=torch.long), torch.tensor([[[5, 1], [1, 1]], [[5, 2], [2, 2]]])]
    stats.update(pictures, codes)
    row = stats.summary()[1]
    assert row["flat_fraction"] == 0.75 and row["flat_distinct"] == 2 and row["textured_distinct"] == 1
    assert row["flat_perplexity"] == pytest.approx(2.0) and row["textured_perplexity"] == pytest.approx(1.0)


def test_the_code_figure_shows_both_tokenizers(tmp_path, capsys):
    from experiments.code_statistics import Args, code_length_maps, log_code_frequency
    from experiments.code_statistics import main as codes_main

    log_frequency = torch.log(torch.tensor([0.5, 0.5] + [1e-6] * 62))
    maps = code_length_maps(torch.tensor([[[0, 5], [1, 0]]]), log_frequency, 4)
    assert maps.shape == (1, 3, 4, 4)
    assert maps[0, 0, 0, 0] < -0.7 and maps[0, 0, 0, 3] == 1.0  # common code dark, a rare one white
    frequency = log_code_frequency(torch.tensor([[0, 0], [0, 2]]), 4).exp()
    torch.testing.assert_close(frequency, torch.tensor([0.75, 0.0, 0.25, 0.0]))
    tiny().save_pretrained(tmp_path / "cosine")
    tiny(lookup="l2").save_pretrained(tmp_path / "l2")
    codes_main(Args(tokenizer=str(tmp_path / "cosine"), against=str(tmp_path / "l2"), images=12,
                    figure=str(tmp_path / "codes.png"), figure_images=3))
    figure = Image.open(tmp_path / "codes.png")
    assert figure.size == (3 * 18 + 2, 5 * 18 + 2)  # portraits, then reconstruction and code lengths of each
    assert capsys.readouterr().out.count("portraits (seed 5)") == 2


def test_tokenizer_evaluation_prints_the_code_predictability():
    metrics = evaluate_tokenizer(tiny().eval(), [images(4), images(4)])
    row = metrics["per_scale"][-1]
    assert {"conditional_entropy", "flat_perplexity", "textured_perplexity", "usage"} <= row.keys()
    assert "exp(H|parent)" in format_tokenizer_metrics(metrics)


def test_the_teacher_trains_and_loads_as_an_alignment_teacher(tmp_path):
    from nextscale.portraits.train_teacher import TeacherTrainConfig, train_teacher
    from nextscale.tokenizer.losses.alignment import FrozenVisionTeacher

    config = TeacherTrainConfig(output_dir=str(tmp_path / "teacher"), image_size=16, patch_size=4, hidden_size=16,
                                layers=1, heads=2, train_images=64, steps=6, batch_size=8, eval_images=8,
                                log_every=1, checkpoint_every=3, tracker="none")
    metrics = train_teacher(config)
    assert set(metrics["held_out_accuracy"]) >= {"gender", "smile"} and len(metrics["loss_curve"]) == 6
    teacher = FrozenVisionTeacher(tmp_path / "teacher" / "model", resolution=16)
    assert teacher(images(2)).shape == (2, 16, 4, 4)
    assert [path.name for path in (tmp_path / "teacher" / "checkpoints").iterdir()] == ["step_3"]  # the runtime


def test_arms_share_one_budget_and_resume(tmp_path):
    """Two arms (one aligned with a tiny teacher) train on the same base; a second call trains nothing."""
    import dataclasses

    from experiments.tokenizer_arms import ArmsConfig, arm_config, run_arms
    from nextscale.data import DataConfig
    from nextscale.portraits.train_teacher import TeacherTrainConfig, train_teacher

    train_teacher(TeacherTrainConfig(output_dir=str(tmp_path / "teacher"), image_size=16, patch_size=4, hidden_size=16,
                                     layers=1, heads=2, train_images=16, steps=1, batch_size=4, eval_images=4,
                                     tracker="none"))
    base = dataclasses.replace(
        ArmsConfig().base, model=tiny_tokenizer_config(), data=DataConfig(image_size=16, synthetic_length=16),
        steps=2, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=100, eval_images=8, mixed_precision="no")
    config = ArmsConfig(out=str(tmp_path / "arms"), arms=("l2-restarts", "align-last"),
                        teacher=str(tmp_path / "teacher" / "model"), teacher_resolution=16, base=base, judge=None)
    aligned = arm_config(config, "align-last")
    assert aligned.alignment.scales == "last" and aligned.model == base.model
    assert (aligned.steps, aligned.seed, aligned.data) == (base.steps, base.seed, base.data)
    restarts = arm_config(config, "l2-restarts").model
    assert restarts.lookup == "l2" and restarts.dead_code_threshold == config.dead_code_threshold > 0
    assert not ArmsConfig().base.alignment.enabled  # the base is unaligned at the demo's size too: arms add it
    rows = run_arms(config)
    assert [row["arm"] for row in rows] == ["l2-restarts", "align-last"]
    assert "| align-last |" in (tmp_path / "arms" / "arms.md").read_text()
    stamp = (tmp_path / "arms" / "align-last" / "metrics.json").stat().st_mtime_ns
    run_arms(config)
    assert (tmp_path / "arms" / "align-last" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown arm"):
        arm_config(config, "nope")
    with pytest.raises(ValueError, match="need --teacher"):
        arm_config(dataclasses.replace(config, teacher=None), "align-scales")


def test_arms_downstream_trains_one_transformer_per_arm(tiny_bert_dir, tmp_path):
    """--downstream trains the same transformer on each arm's codes, scores it, and resumes without work."""
    import dataclasses

    from conftest import TINY_TEXT_MAX_LENGTH

    from experiments.tokenizer_arms import ArmsConfig, format_arms, run_arms
    from nextscale.data import DataConfig
    from nextscale.portraits.judge import AttributeJudge, JudgeConfig
    from nextscale.transformer import TransformerConfig

    torch.manual_seed(0)
    AttributeJudge(JudgeConfig(image_size=16, channels=(8, 8), pooled_size=2, feature_dim=8)).save_pretrained(
        tmp_path / "judge")
    data = DataConfig(image_size=16, synthetic_length=64)
    defaults = ArmsConfig()
    base = dataclasses.replace(defaults.base, model=tiny_tokenizer_config(), data=data, steps=2, batch_size=4,
                               warmup_steps=1, log_every=1, checkpoint_every=100, eval_images=8,
                               mixed_precision="no")
    transformer = dataclasses.replace(
        defaults.transformer, model=TransformerConfig.preset("tiny"), data=data, cache_images=64, steps=3,
        batch_size=8, warmup_steps=1, log_every=1, eval_images=16, mixed_precision="no",
        text_encoder=str(tiny_bert_dir), text_max_length=TINY_TEXT_MAX_LENGTH)
    config = ArmsConfig(out=str(tmp_path / "arms"), arms=("cosine", "l2"), base=base,
                        judge=str(tmp_path / "judge"), judge_images=8, downstream=True, transformer=transformer,
                        images_per_prompt=1)
    rows = run_arms(config)
    for row in rows:
        arm = tmp_path / "arms" / row["arm"]
        trained = json.loads((arm / "var" / "train_config.json").read_text())
        assert trained["tokenizer"] == str(arm / "model") and trained["steps"] == 3
        assert len(row["var_loss_per_scale"]) == 3 and row["var_held_out_loss"] > 0
        assert 0.0 <= row["adherence_single"] <= 1.0 and row["adherence_cfg"] == 2.0
        assert row["sample_frechet_distance"] >= 0
    assert rows[0]["var_loss_per_scale"] != rows[1]["var_loss_per_scale"]  # each on its own arm's codes
    table = format_arms(rows)
    assert "| l2 | " in table.split("transformer held-out loss")[1]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "arms" / "arms.png").stat().st_size > 10_000
    stamps = [(tmp_path / "arms" / name / "var" / "metrics.json").stat().st_mtime_ns for name in config.arms]
    assert run_arms(config) == rows
    with pytest.raises(ValueError, match="--downstream scores the transformers with a judge"):
        run_arms(dataclasses.replace(config, judge=None))
    assert stamps == [(tmp_path / "arms" / name / "var" / "metrics.json").stat().st_mtime_ns
                      for name in config.arms]


def test_judge_check_of_a_tokenizer():
    from experiments.tokenizer_arms import judge_check
    from nextscale.portraits.judge import AttributeJudge, render_portraits
    from nextscale.sampling.pipeline import DEMO_PIPELINE

    judge = AttributeJudge.from_pretrained(DEMO_PIPELINE / "judge")
    renders = [render_portraits(seed, 16, 64, judge.config)[0] for seed in (7, 8)]
    tokenizer = MultiScaleVQVAE.from_pretrained(DEMO_PIPELINE / "tokenizer")
    check = judge_check(judge, tokenizer, *renders)
    assert set(check["agreement"]) == set(judge.config.attribute_names)
    assert min(check["agreement"].values()) >= 0.75  # the demo tokenizer keeps the attributes
    assert 0 < check["frechet_distance_real_vs_real"] and 0 < check["frechet_distance"]
