"""The evaluation on a tiny budget: real-pipeline loading, judge scoring, baselines, reports."""

from __future__ import annotations

import json

import pytest
import torch

from nextscale.eval.fid import frechet_distance, frechet_distance_noise
from nextscale.portraits.adherence import (
    EvaluationConfig,
    adherence,
    choose_cfg_row,
    diversity,
    evaluate,
    level_prompt_set,
    markdown_report,
    prompt_set,
)
from nextscale.portraits.judge import AttributeJudge, JudgeConfig


def test_frechet_distance_zero_for_identical_and_grows_with_shift():
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(features, features + 1.0) == pytest.approx(8.0, rel=1e-3)


def test_fd_noise_resamples_each_prompts_own_images_and_falls_with_more_of_them():
    generator = torch.Generator().manual_seed(1)
    prompts, dim = 6, 3
    real = torch.randn(prompts * 8, dim, generator=generator)
    # every prompt's images identical (prompts differ): resampling within a prompt changes nothing
    constant = torch.randn(prompts, 1, dim, generator=generator).expand(prompts, 8, dim).reshape(-1, dim)
    assert frechet_distance_noise(constant, real, 8) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_noise(constant, real, 1) == 0.0
    few, many = (torch.randn(prompts * per, dim, generator=generator) for per in (4, 256))
    real_many = torch.randn(prompts * 256, dim, generator=generator)
    noise_few = frechet_distance_noise(few, real_many[: prompts * 4], 4)
    assert noise_few > 0 and frechet_distance_noise(few, real_many[: prompts * 4], 4) == noise_few  # seeded
    assert frechet_distance_noise(many, real_many, 256) < noise_few / 3


def test_diversity_zero_for_copies():
    images = torch.rand(1, 3, 4, 4).repeat(4, 1, 1, 1)
    assert diversity(images, 4) == pytest.approx(0.0, abs=1e-6)
    assert diversity(torch.rand(8, 3, 4, 4), 4) > 0.1


def test_prompt_set_covers_every_value_and_is_deterministic():
    singles, triples = prompt_set(5, seed=0)
    assert len(singles) == sum(len(v) for v in JudgeConfig().attribute_values)
    assert [t.text for t in triples] == [t.text for t in prompt_set(5, seed=0)[1]]
    assert all(len(t.attributes) == 3 and "gender" in t.attributes for t in triples)
    assert all(not (t.attributes.get("gender") == "woman" and t.attributes.get("beard") == "yes") for t in triples)


def test_level_prompts_name_one_visible_attribute_each():
    close = level_prompt_set(4)
    assert {name for spec in close for name in spec.attributes} == {"gender", "beard", "glasses", "skin", "smile"}
    assert all(spec.text.startswith("an extreme close-up of the eyes of ") and len(spec.attributes) == 1
               for spec in close)
    assert len(level_prompt_set(2)) == len(prompt_set(1, 0)[0])


def test_adherence_counts_only_asked_attributes():
    judge = AttributeJudge(JudgeConfig(image_size=16, channels=(8, 8), pooled_size=2, feature_dim=8))
    singles, _ = prompt_set(1, 0)
    spec = next(s for s in singles if s.attributes == {"glasses": "yes"})
    glasses = judge.config.attribute_names.index("glasses")
    predicted = torch.zeros(4, len(judge.config.attribute_names), dtype=torch.long)
    yes = judge.config.attribute_values[glasses].index("yes")
    predicted[:3, glasses] = yes
    predicted[3, glasses] = 1 - yes
    scores = adherence(predicted, [spec], 4, judge)
    assert scores["per_attribute"] == {"glasses": 0.75} and scores["all_correct"] == 0.75


def test_evaluation_end_to_end_on_a_tiny_budget(tiny_pipeline_dir, tmp_path):
    torch.manual_seed(0)
    judge = AttributeJudge(JudgeConfig(image_size=16, channels=(8, 8), pooled_size=2, feature_dim=8))
    judge.save_pretrained(tmp_path / "judge")
    config = EvaluationConfig(checkpoint=str(tiny_pipeline_dir), judge=str(tmp_path / "judge"), out=tmp_path / "eval",
                              images_per_prompt=2, num_triples=2, cfg_scales=(0.0, 3.0), batch_size=32,
                              zoom_levels=(2, 4))
    report = evaluate(config)
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["best_cfg_scale"] in (0.0, 3.0) and len(saved["sweep"]) == 2
    assert saved["best_cfg_scale"] in saved["tied_cfg_scales"]
    assert saved["reconstructions"]["frechet_distance"] >= 0
    assert all(entry["frechet_distance_noise"] >= 0 for entry in saved["sweep"])
    for entry in (saved["real"], saved["reconstructions"], saved["unconditional"], *saved["sweep"]):
        assert 0.0 <= entry["single"]["mean"] <= 1.0 and 0.0 <= entry["triple"]["all_correct"] <= 1.0
    assert report["seconds_per_image"] > 0
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "real renders" in table and "tokenizer reconstructions" in table and "cfg 3" in table
    assert (tmp_path / "eval" / "progression.png").is_file()
    assert set(saved["zoom"]) == {"2", "4"} and "Zoom 4x" in table
    saved["sweep"][0]["frechet_distance_noise"], saved["sweep"][1]["frechet_distance_noise"] = 0.0, 31.6
    rows = {line.split(" |")[0]: line for line in markdown_report(saved).splitlines()}
    assert rows["| cfg 3"].count("± 32") == 1 and "±" not in rows["| cfg 0"]
    assert set(saved["zoom"]["4"]["generated"]["per_attribute"]) == {"gender", "beard", "glasses", "skin", "smile"}


def test_choose_cfg_row_breaks_adherence_ties_within_noise_by_fd():
    def row(cfg, mean, fd):
        return {"cfg_scale": cfg, "single": {"mean": mean}, "frechet_distance": fd}

    # the bundled demo's sweep: 24 prompts x 16 images; cfg 6 leads cfg 2 by two images of 384
    sweep = [row(0.0, 0.936, 249.7), row(2.0, 0.996, 325.0), row(4.0, 0.993, 361.5), row(6.0, 0.999, 370.2)]
    chosen, tied = choose_cfg_row(sweep, 384)
    assert chosen["cfg_scale"] == 2.0 and [r["cfg_scale"] for r in tied] == [2.0, 6.0]
    # with a hundred times the images the same lead is no longer noise: the best adherence wins alone
    chosen, tied = choose_cfg_row(sweep, 38400)
    assert chosen["cfg_scale"] == 6.0 and tied == [sweep[3]]
    # a lower FD never buys a clearly worse adherence
    assert choose_cfg_row([row(0.0, 0.90, 10.0), row(2.0, 1.0, 500.0)], 384)[0]["cfg_scale"] == 2.0
    with pytest.raises(ValueError, match="at least one"):
        choose_cfg_row([], 384)
