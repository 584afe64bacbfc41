"""The rate-aware lookup: codes chosen by error plus code length, cheaper where the image is flat."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_tokenizer_config
from PIL import Image

from nextscale.sampling.constraints import ScaleConstraints
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.tokenizer.quantizer import nearest_codes
from nextscale.tokenizer.rate import (
    calibrate_code_rate,
    log_code_frequencies,
    lookup_distortion,
    rate_aware_codes,
    rate_weights,
)
from nextscale.train.code_rate import cli as calibrate_cli
from nextscale.train.code_rate import residual_energy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` is a folder of the checkout
from experiments.code_statistics import Args, code_length_maps  # noqa: E402
from experiments.code_statistics import main as codes_main  # noqa: E402


def tiny(**overrides: object) -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(tiny_tokenizer_config(**overrides))


def images(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("rule", ["cosine", "l2"])
def test_without_a_rate_the_choice_is_the_plain_lookup(rule):
    generator = torch.Generator().manual_seed(0)
    vectors, weight = torch.randn(500, 8, generator=generator), torch.randn(64, 8, generator=generator)
    log_p = torch.randn(64, generator=generator)
    assert torch.equal(rate_aware_codes(vectors, weight, rule, log_p, 0.0), nearest_codes(vectors, weight, rule))
    # the cosine distortion is the error of the code's direction scaled to the residual's norm
    distortion = lookup_distortion(vectors, weight, "cosine")
    scaled = vectors.norm(dim=-1, keepdim=True)[:, :, None] * torch.nn.functional.normalize(weight, dim=-1)[None]
    torch.testing.assert_close(distortion, (vectors[:, None] - scaled).pow(2).sum(-1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rule", ["cosine", "l2"])
def test_the_rate_trades_a_little_error_for_a_common_code(rule):
    weight = torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0]])
    log_p = torch.tensor([math.log(0.01), math.log(0.98), math.log(0.01)])  # code 1 is common
    near_code_0 = torch.tensor([[1.0, 0.02]])
    assert rate_aware_codes(near_code_0, weight, rule, log_p, 0.0).item() == 0
    assert rate_aware_codes(near_code_0, weight, rule, log_p, 0.05).item() == 1
    # far from the common code, the error wins over the rate
    assert rate_aware_codes(torch.tensor([[0.0, 1.0]]), weight, rule, log_p, 0.05).item() == 2
    # the rate per vector: the same vector keeps its nearest code where its rate is low
    rates = torch.tensor([0.0, 0.05])
    assert rate_aware_codes(near_code_0.expand(2, -1), weight, rule, log_p, rates).tolist() == [0, 1]


def test_the_cosine_rate_respects_the_residuals_magnitude():
    """Cosine picks by direction alone; with a rate, a small residual takes the common code, a large one
    of the same direction keeps its nearest."""
    weight = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    log_p = torch.tensor([math.log(0.02), math.log(0.98)])
    direction = torch.tensor([[1.0, 0.05]])
    small, large = 0.1 * direction, 3.0 * direction
    assert nearest_codes(small, weight, "cosine").item() == nearest_codes(large, weight, "cosine").item() == 0
    assert rate_aware_codes(small, weight, "cosine", log_p, 0.01).item() == 1
    assert rate_aware_codes(large, weight, "cosine", log_p, 0.01).item() == 0


def test_rate_weights_follow_the_pixel_contrast_of_each_cell():
    image = torch.zeros(1, 3, 4, 4)
    image[..., :, 2:] = torch.tensor([[0.3, -0.3], [-0.3, 0.3]]).repeat(2, 1)  # right half: std 0.3
    weights = rate_weights(image, 2, flat_boost=4.0, contrast=0.1)
    flat, textured = 1 + 4.0, 1 + 4.0 * 0.1**2 / (0.3**2 + 0.1**2)
    torch.testing.assert_close(weights, torch.tensor([[[flat, textured], [flat, textured]]]))


def test_flat_cells_take_the_common_code_and_textured_cells_keep_theirs():
    model = tiny(code_rate=1e-6, code_rate_flat_boost=1e6, code_rate_contrast=1e-4).eval()
    plain = tiny().eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    log_p = torch.full((3, 64), -20.0)
    log_p[:, 7] = 0.0  # code 7 is (nearly) free, every other costs 20 nats
    model.quantizer.code_log_probability.copy_(log_p)
    x = images(2)
    x[..., :8] = 0.25  # the left half of every image is flat
    codes, plain_codes = model.encode(x), plain.encode(x)
    # scale 0 (1x1) is one textured cell: the rate there is negligible, so both agree
    assert torch.equal(codes[0], plain_codes[0])
    for scale, side in ((1, 2), (2, 4)):
        left = slice(0, side // 2)
        assert bool((codes[scale][..., left] == 7).all())
        assert not bool((plain_codes[scale][..., left] == 7).all())
    # the textured right half keeps its nearest codes on the finest scale (the same residual there
    # only if the coarser codes match: compare on images with no flat cell at all)
    y = images(2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.encode(y), plain.encode(y)))


def test_a_flat_boost_needs_the_images():
    model = tiny(code_rate=0.01, code_rate_flat_boost=2.0)
    latent = model.encoder(images(1))
    with pytest.raises(ValueError, match="pass the images"):
        model.quantizer(latent)
    assert len(model.quantizer(latent, images(1)).codes) == 3
    assert len(tiny(code_rate=0.01).quantizer(latent).codes) == 3  # one rate everywhere: no images needed


def test_the_config_checks_the_rate():
    with pytest.raises(ValueError, match="code_rate and null_code"):
        tiny_tokenizer_config(code_rate=0.01, null_code=True)
    with pytest.raises(ValueError, match="code_rate_contrast > 0"):
        tiny_tokenizer_config(code_rate=0.01, code_rate_contrast=0.0)


def test_the_code_probabilities_are_saved_with_the_weights(tmp_path):
    assert "quantizer.code_log_probability" not in tiny().state_dict()  # older checkpoints load unchanged
    model = tiny(code_rate=0.02, code_rate_flat_boost=2.0).eval()
    calibrate_code_rate(model, [images(8)], iterations=2)
    assert not torch.allclose(model.quantizer.code_log_probability, torch.full((3, 64), -math.log(64)))
    model.save_pretrained(tmp_path / "rate")
    loaded = MultiScaleVQVAE.from_pretrained(tmp_path / "rate").eval()
    torch.testing.assert_close(loaded.quantizer.code_log_probability, model.quantizer.code_log_probability)
    x = images(3, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x), model.encode(x)))


def test_a_fine_tune_starts_from_the_calibrated_probabilities(tmp_path):
    """`train_tokenizer.py --init-from` a calibrated tokenizer with the same rate options: the fine-tune
    starts from its weights and its code probabilities (not uniform ones); another rate is refused."""
    from nextscale.train.state import load_initial_weights

    calibrated = tiny(code_rate=0.02, code_rate_flat_boost=2.0).eval()
    calibrate_code_rate(calibrated, [images(8)], iterations=2)
    calibrated.save_pretrained(tmp_path / "rate")
    fine_tune = tiny(code_rate=0.02, code_rate_flat_boost=2.0)
    assert torch.allclose(fine_tune.quantizer.code_log_probability, torch.full((3, 64), -math.log(64)))
    load_initial_weights(fine_tune, str(tmp_path / "rate"))
    torch.testing.assert_close(fine_tune.quantizer.code_log_probability, calibrated.quantizer.code_log_probability)
    x = images(3, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(fine_tune.eval().encode(x), calibrated.encode(x)))
    with pytest.raises(ValueError, match="code_rate: 0.02 there, 0.01 here"):
        load_initial_weights(tiny(code_rate=0.01, code_rate_flat_boost=2.0), str(tmp_path / "rate"))


def test_training_tracks_the_code_probabilities_and_evaluation_keeps_them():
    model = tiny(code_rate=0.01)
    before = model.quantizer.code_log_probability.clone()
    model.eval()
    model(images())
    assert torch.equal(model.quantizer.code_log_probability, before)
    model.train()
    out = model(images())
    after = model.quantizer.code_log_probability
    assert not torch.equal(after, before)
    torch.testing.assert_close(after.exp().sum(-1), torch.ones(3))  # still distributions
    # the EMA moves each scale towards its own histogram
    fresh = log_code_frequencies(out.codes, 64).exp()
    assert ((after.exp() - fresh).abs().sum() < (before.exp() - fresh).abs().sum())


def test_calibration_lowers_the_code_entropy():
    model = tiny(code_rate=0.05).eval()
    x = images(16)
    plain = tiny().eval()
    plain.load_state_dict(model.state_dict(), strict=False)

    def entropy(codes: list[torch.Tensor]) -> float:
        log_p = log_code_frequencies(codes, 64, prior=0.0)
        return float(-(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum())

    calibrate_code_rate(model, [x], iterations=3)
    assert entropy(model.encode(x)) < entropy(plain.encode(x))


def test_the_calibration_command_keeps_the_decoder_and_explains_bad_input(tmp_path, capsys):
    source = tiny().eval()
    source.save_pretrained(tmp_path / "plain")
    calibrate_cli(["--tokenizer", str(tmp_path / "plain"), "--out", str(tmp_path / "rate"), "--code-rate", "0.02",
                   "--flat-boost", "3", "--images", "24", "--iterations", "1", "--eval-images", "8"])
    model = MultiScaleVQVAE.from_pretrained(tmp_path / "rate").eval()
    assert (model.config.code_rate, model.config.code_rate_flat_boost) == (0.02, 3.0)
    codes = model.encode(images(2))
    assert torch.equal(model.decode(codes), source.decode(codes))
    out = capsys.readouterr().out
    assert "calibration pass 1/1" in out and "PSNR" in out and "residual energy per scale" in out
    metrics = json.loads((tmp_path / "rate" / "metrics.json").read_text())
    assert metrics["num_images"] == 8 and metrics["held_out"] and metrics["calibration_images"] == 24
    assert len(metrics["per_scale"]) == 3 and "flat_perplexity" in metrics["per_scale"][-1]
    assert len(metrics["residual_energy"]) == 3 and all(e > 0 for e in metrics["residual_energy"])
    with pytest.raises(SystemExit) as exit_info:
        calibrate_cli(["--tokenizer", str(tmp_path / "plain"), "--out", str(tmp_path / "x"), "--code-rate", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--code-rate must be > 0" in err[0], err
    assert not (tmp_path / "x").exists()


def test_residual_energy_is_what_each_scale_is_left_to_code_and_grows_with_the_latent():
    model = tiny().eval()
    batch = images(3)
    energy = residual_energy(model, batch)
    latent = model.encoder(batch).detach()
    assert energy.shape == (len(model.quantizer.scale_sizes),)
    # the first scale sees the whole latent, pooled to one cell
    assert float(energy[0]) == pytest.approx(float(latent.mean((2, 3)).pow(2).sum(1).mean()), rel=1e-5)
    # a latent (and codebook) twice as large: four times the energy at every scale, the same codes
    bigger = tiny().eval()
    with torch.no_grad():  # the encoder's last layer, the codes and the phi convolutions' offsets, doubled
        for name, parameter in bigger.named_parameters():
            if name.startswith("encoder.out.") or name == "quantizer.embedding.weight" or (
                    name.startswith("quantizer.phis.") and name.endswith(".bias")):
                parameter.mul_(2)
    assert torch.equal(bigger.encode(batch)[-1], model.encode(batch)[-1])
    assert torch.allclose(residual_energy(bigger, batch), 4 * energy, rtol=1e-4)


def test_re_quantised_known_codes_are_the_rate_aware_encoders():
    """Editing re-quantises kept codes from the known latent: with nothing regenerated, at the scale's own
    rate (and the image's flat cells), that gives back exactly what `encode` gave."""
    model = tiny(code_rate=0.05, code_rate_flat_boost=3.0).eval()
    x = images(2)
    x[..., :8] = 0.1
    calibrate_code_rate(model, [images(8, seed=4)], iterations=2)
    codes = model.encode(x)
    latent = model.encoder(x)
    masks = tuple(torch.ones_like(c, dtype=torch.bool) for c in codes)
    constraints = ScaleConstraints(tuple(codes), masks, latent, x)
    accumulated = None
    for scale, code in enumerate(codes):
        assert torch.equal(constraints.known_codes(scale, model.quantizer, accumulated), code)
        z = model.quantizer.embed_scale(scale, code)
        accumulated = z if accumulated is None else accumulated + z
    with pytest.raises(ValueError, match="pass the images"):
        ScaleConstraints(tuple(codes), masks, latent).known_codes(1, model.quantizer, None)


def test_the_code_figure_shows_both_tokenizers(tmp_path, capsys):
    log_frequency = torch.log(torch.tensor([0.5, 0.5] + [1e-6] * 62))
    maps = code_length_maps(torch.tensor([[[0, 5], [1, 0]]]), log_frequency, 4)
    assert maps.shape == (1, 3, 4, 4)
    assert maps[0, 0, 0, 0] < -0.7 and maps[0, 0, 0, 3] == 1.0  # common code dark, a rare one white
    tiny().save_pretrained(tmp_path / "plain")
    tiny(code_rate=0.05).save_pretrained(tmp_path / "rate")
    codes_main(Args(tokenizer=str(tmp_path / "plain"), against=str(tmp_path / "rate"), images=12,
                    figure=str(tmp_path / "codes.png"), figure_images=3))
    figure = Image.open(tmp_path / "codes.png")
    assert figure.size == (3 * 18 + 2, 5 * 18 + 2)  # portraits, then reconstruction and code lengths of each
    assert capsys.readouterr().out.count("portraits (seed 5)") == 2
