"""The editing and zoom evaluation on a tiny budget, and its pure measures."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from nextscale.images import psnr
from nextscale.portraits.adherence import consistent_attributes
from nextscale.portraits.editing import EditEvaluationConfig, evaluate, eye_band, masked_psnr
from nextscale.portraits.judge import AttributeJudge, JudgeConfig
from nextscale.portraits.zoom import (
    ZoomEvaluation,
    level_prompt,
    magnifications,
    render_level,
    rendered_agreement,
    zoom_adherence,
)
from nextscale.sampling.pipeline import DEMO_PIPELINE
from nextscale.sampling.zoom import centre, shrink
from nextscale.tokenizer import MultiScaleVQVAE


def test_masked_psnr_sees_only_the_known_pixels() -> None:
    target = torch.zeros(2, 3, 8, 8)
    images = target.clone()
    images[:, :, :4] = 1.0  # wrong only where unknown
    known = torch.zeros(2, 8, 8, dtype=torch.bool)
    known[:, 4:] = True
    assert (masked_psnr(images, target, known) > 90).all()
    images[:, :, 7, 7] = 0.5
    assert (masked_psnr(images, target, known) < 90).all()
    band = eye_band(1, 64)
    assert not band[0, 19:34, 16:48].any() and band[0, 40:].all()


def test_zoom_adherence_takes_any_judge_and_names_per_level() -> None:
    torch.manual_seed(0)
    judge = AttributeJudge(JudgeConfig(image_size=16, channels=(8, 8), pooled_size=2, feature_dim=8)).eval()
    levels = [torch.rand(3, 3, 16, 16) * 2 - 1 for _ in range(2)]
    predicted = judge.predict(levels[1])
    attributes = [dict(row) for row in predicted]
    attributes[0]["glasses"] = "no" if attributes[0]["glasses"] == "yes" else "yes"
    scores = zoom_adherence(judge, levels, attributes, [("gender",), ("glasses", "skin")])
    assert list(scores[0]) == ["gender"] and scores[1] == {"glasses": 2 / 3, "skin": 1.0}
    assert magnifications(2, 4) == [1, 2, 4] and magnifications(4, 4) == [1, 4]
    item = {"gender": "man", "glasses": "yes", "skin": "dark"}
    assert level_prompt(item, 1, ("gender", "glasses")) == "a man with glasses"
    assert level_prompt(item, 4, ("glasses", "skin")).startswith("an extreme close-up of the eyes of ")


def test_editing_evaluation_end_to_end_on_a_tiny_budget(tiny_pipeline_dir, tmp_path) -> None:
    torch.manual_seed(0)
    judge = AttributeJudge(JudgeConfig(image_size=16, channels=(8, 8), pooled_size=2, feature_dim=8))
    judge.save_pretrained(tmp_path / "judge")
    config = EditEvaluationConfig(checkpoint=str(tiny_pipeline_dir), judge=str(tmp_path / "judge"),
                                  out=tmp_path / "eval", num_edits=4, keep_scales=(1,), switch_scales=(2,),
                                  outpaint_sides=(4, 4, 4, 4), batch_size=4,
                                  zoom=ZoomEvaluation(factors=(2,), chains=2, zoom_out=False))
    report = evaluate(config)
    saved = json.loads((tmp_path / "eval" / "editing.json").read_text())
    assert saved["inpainting"]["edits"] == 4 and 0 <= saved["inpainting"]["glasses"] <= 1
    assert saved["inpainting"]["kept_psnr_after_blend"] > saved["inpainting"]["kept_psnr_before_blend"]
    assert [row["keep_scales"] for row in saved["variations"]] == [1]
    assert [row["switch_scale"] for row in saved["per_scale_prompts"]] == [2]
    assert (tmp_path / "eval" / "per_scale_prompts.png").is_file()  # A alone, B alone, each switch
    zoom_row = report["zoom"][0]
    assert len(zoom_row["agreement_before_blend"]) == 2 and len(zoom_row["adherence"]) == 3
    assert len(zoom_row["rendered_agreement"]) == 2
    assert zoom_row["agreement_after_blend"][0] > zoom_row["agreement_before_blend"][0]
    table = (tmp_path / "eval" / "editing.md").read_text()
    assert "inpainting the eye band" in table and "| in x2 |" in table
    assert (tmp_path / "eval" / "inpaint.png").is_file() and (tmp_path / "eval" / "zoom-x2" / "zoom-x2.gif").is_file()
    # --only runs the measurements asked for and reports those alone
    alone = evaluate(dataclasses.replace(config, out=tmp_path / "alone", only=("per-scale-prompts",)))
    assert set(alone) == {"config", "per_scale_prompts"} and alone["per_scale_prompts"] == report["per_scale_prompts"]
    assert (tmp_path / "alone" / "editing.md").read_text().count("\n| per-scale prompts") == 1


def test_the_worlds_own_zoom_agreement_pairs_each_portrait_with_its_deeper_view() -> None:
    """Rendered natively at 2x, a portrait shrunk back agrees with the centre of its 1x view's tokenizer round
    trip (24.7 dB on 16 chains with the demo tokenizer); a child of another portrait scores about 13 dB."""
    tokenizer = MultiScaleVQVAE.from_pretrained(DEMO_PIPELINE / "tokenizer")
    rng = np.random.default_rng([100])
    attributes = [consistent_attributes({}, rng) for _ in range(6)]
    first, second = rendered_agreement(tokenizer, attributes, [1, 2, 4], 2, seed=100)
    assert 21 < first < 30 and 19 < second < first
    parents = torch.stack([render_level(item, 64, (100, chain), 1) for chain, item in enumerate(attributes)])
    others = torch.stack([render_level(item, 64, (100, chain), 2) for chain, item in enumerate(attributes)]).roll(1, 0)
    with torch.no_grad():
        mismatched = psnr(shrink(others, 2), centre(tokenizer.decode(tokenizer.encode(parents)), 2)).mean()
    assert mismatched < first - 6
