"""Tokens worth predicting: the null-code lookup and the code-predictability measurements."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_tokenizer_config

from nextscale.eval.codes import CodeStatistics, entropy, parent_cells, parent_codes
from nextscale.eval.tokenizer import evaluate_tokenizer, format_tokenizer_metrics
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.tokenizer.quantizer import nearest_codes, null_code_lookup
from nextscale.tokenizer.rate import cell_contrast


def tiny(**overrides: object) -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(tiny_tokenizer_config(**overrides))


def images(batch: int = 4) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("rule", ["cosine", "l2"])
def test_null_code_lookup_adds_a_code_only_where_it_reduces_the_error(rule):
    weight = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0]])  # row 0 is ignored: the null code
    vectors = torch.tensor([[0.0, 0.0], [0.05, 0.0], [0.9, 0.1], [0.0, 2.0], [-1.0, 0.0]])
    codes = null_code_lookup(vectors, weight, rule)
    assert codes.tolist() == [0, 0, 1, 2, 0]
    # the plain cosine rule gives the tiny residual a full code
    assert nearest_codes(vectors[1:2], weight[1:], "cosine").item() + 1 == 1
    chosen = torch.where(codes[:, None] == 0, torch.zeros(2), weight[codes])
    assert ((vectors - chosen).pow(2).sum(-1) <= vectors.pow(2).sum(-1)).all()


def test_null_code_is_the_zero_vector_and_learns_nothing():
    model = tiny(null_code=True)
    assert torch.equal(model.quantizer.codebook()[0], torch.zeros(8))
    out = model(images())
    (out.reconstruction.pow(2).mean() + out.quantization_loss).backward()
    assert model.quantizer.embedding.weight.grad[0].abs().sum() == 0
    assert model.quantizer.embedding.weight.grad[1:].abs().sum() > 0
    # nothing to add (and no phi conv, whose bias would add something) -> the null code everywhere
    with torch.no_grad():
        codes = tiny(null_code=True, num_phi=0).quantizer(torch.zeros(2, 8, 4, 4)).codes
    assert all(bool((c == 0).all()) for c in codes)


def test_null_code_keeps_the_quantiser_invariants():
    model = tiny(null_code=True).eval()
    x = images()
    out = model(x)
    codes = model.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(codes, out.codes))
    torch.testing.assert_close(model.decode(codes), out.reconstruction.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    # with phi as the identity, the finest scale (no resizing) never increases the error
    model = tiny(null_code=True, num_phi=0)
    with torch.no_grad():
        latent = model.encoder(x)
        partials = model.quantizer(latent).accumulated
    before, after = ((latent - p).pow(2).sum(1) for p in partials[-2:])
    assert bool((after <= before + 1e-6).all())


def test_dead_code_restarts_leave_the_null_code_alone():
    model = tiny(null_code=True, dead_code_threshold=0.5)
    model.quantizer.usage_ema.zero_()
    latent = model.encoder(images(2)).detach()
    assert model.quantizer.restart_dead_codes(latent) == 63
    assert torch.equal(model.quantizer.codebook()[0], torch.zeros(8))


def test_residual_sparsity_adds_the_mean_cell_norm_of_the_finest_residuals_and_reaches_the_encoder_only():
    from nextscale.tokenizer.quantizer import resize

    latent = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    plain, sparse = tiny(), tiny(residual_sparsity=0.3, residual_sparsity_scales=2)
    runs = []
    for model in (plain, sparse):
        x = latent.clone().requires_grad_(True)
        out = model.quantizer(x)
        out.loss.backward()
        runs.append((out, x.grad, model.quantizer.embedding.weight.grad, model.quantizer.phis[0].conv.weight.grad))
    (reference, latent_plain, codebook_plain, phi_plain), (out, latent_sparse, codebook_sparse, phi_sparse) = runs
    assert all(torch.equal(a, b) for a, b in zip(out.codes, reference.codes))  # the codes do not change
    # the residuals the two finest scales (2x2, 4x4) quantise: the latent minus the coarser scales' sum
    expected = sum(resize(latent - before.detach(), size).pow(2).sum(1).sqrt().mean()
                   for before, size in zip(reference.accumulated[:2], (2, 4))) / 2
    torch.testing.assert_close(out.loss - reference.loss, 0.3 * expected)
    # its gradient reaches the encoder's latent and nothing in the codebook or phi
    assert (latent_sparse - latent_plain).abs().sum() > 1e-3
    torch.testing.assert_close(codebook_sparse, codebook_plain)
    torch.testing.assert_close(phi_sparse, phi_plain)
    with pytest.raises(ValueError, match="residual_sparsity_scales"):
        tiny_tokenizer_config(residual_sparsity=0.1, residual_sparsity_scales=4)


def test_default_config_behaves_as_before():
    """null_code off: the lookup and the embeddings are the plain cosine ones."""
    model = tiny()
    weight = model.quantizer.embedding.weight
    assert model.quantizer.codebook() is weight
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
    config = ArmsConfig(out=str(tmp_path / "arms"), arms=("cosine-null", "align-last"),
                        teacher=str(tmp_path / "teacher" / "model"), teacher_resolution=16, base=base, judge=None)
    aligned = arm_config(config, "align-last")
    assert aligned.alignment.scales == "last" and aligned.model == base.model
    assert (aligned.steps, aligned.seed, aligned.data) == (base.steps, base.seed, base.data)
    assert arm_config(config, "cosine-null").model.null_code
    assert not ArmsConfig().base.alignment.enabled  # the base is unaligned at the demo's size too: arms add it
    sparse = arm_config(config, "null-sparse").model
    assert sparse.null_code and sparse.residual_sparsity == config.residual_sparsity > 0
    rows = run_arms(config)
    assert [row["arm"] for row in rows] == ["cosine-null", "align-last"]
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
