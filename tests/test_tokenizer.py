"""Tokenizer invariants: scales, quantiser, alignment, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nextscale.scales import (
    block_causal_mask,
    flatten_codes,
    phi_index,
    scale_offsets,
    total_tokens,
    unflatten_codes,
    validate_scale_sizes,
)
from nextscale.tokenizer import MultiScaleVQVAE, TokenizerConfig
from nextscale.tokenizer.losses.alignment import AlignmentConfig, AlignmentHead, FrozenVisionTeacher, feature_pyramid

TINY = dict(image_size=16, latent_dim=8, vocab_size=64, scale_sizes=(1, 2, 4), channel_mult=(1, 2, 2),
            encoder_channels=16, decoder_channels=16, decoder_res_blocks=1, norm_groups=8, num_phi=3)


def tiny_tokenizer(**overrides) -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(TokenizerConfig(**{**TINY, **overrides}))


def images(batch: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_scale_arithmetic():
    sizes = (1, 2, 3, 4, 6, 8)
    assert total_tokens(sizes) == 130
    assert total_tokens((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)) == 680
    assert scale_offsets((1, 2, 3)) == [0, 1, 5, 14]
    mask = block_causal_mask((1, 2))
    expected = torch.tensor([[1, 0, 0, 0, 0]] + [[1, 1, 1, 1, 1]] * 4, dtype=torch.bool)
    assert torch.equal(mask, expected)
    codes = [torch.randint(0, 9, (2, s, s)) for s in sizes]
    back = unflatten_codes(flatten_codes(codes), sizes)
    assert all(torch.equal(a, b) for a, b in zip(codes, back))
    with pytest.raises(ValueError, match="strictly increasing"):
        validate_scale_sizes((1, 3, 2))


def test_phi_index_spreads_over_shared_convs():
    picks = [phi_index(k, 10, 4) for k in range(10)]
    assert picks[0] == 0 and picks[-1] == 3 and sorted(set(picks)) == [0, 1, 2, 3]


def reference_phi_rule(scale: int, num_scales: int, num_phi: int) -> int:
    """VAR's PhiPartiallyShared as the reference fixture documents it: ticks linspace(1/3/K, 1 - 1/3/K, K)
    when K == 4, else linspace(1/2/K, 1 - 1/2/K, K), in float64; the nearest tick to k / (SN - 1)."""
    ticks = np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi) if num_phi == 4 else np.linspace(
        1 / 2 / num_phi, 1 - 1 / 2 / num_phi, num_phi
    )
    return int(np.argmin(np.abs(ticks - scale / (num_scales - 1)))) if num_scales > 1 else 0


@pytest.mark.parametrize("num_phi", range(1, 9))
def test_phi_index_follows_the_reference_rule(num_phi: int):
    for num_scales in range(1, 17):
        ours = [phi_index(k, num_scales, num_phi) for k in range(num_scales)]
        assert ours == [reference_phi_rule(k, num_scales, num_phi) for k in range(num_scales)], num_scales


def test_phi_index_breaks_vars_ties_as_vars_float64_rule():
    # scales 2 and 7 of 10 sit exactly between two ticks; float32 ticks would pick 0 and 2 there
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    # the demo's 6 scales keep the phis they were trained with
    assert [phi_index(k, 6, 4) for k in range(6)] == [0, 0, 1, 2, 3, 3]


def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="last scale size must equal the latent side"):
        TokenizerConfig(**{**TINY, "scale_sizes": (1, 2, 3)})
    with pytest.raises(ValueError, match="not divisible"):
        TokenizerConfig(**{**TINY, "image_size": 18})
    with pytest.raises(ValueError, match="leaves 1 phi conv"):
        TokenizerConfig(**{**TINY, "num_phi": 4})


def test_encode_decode_matches_forward_in_eval():
    model = tiny_tokenizer().eval()
    x = images()
    out = model(x)
    codes = model.encode(x)
    assert [c.shape for c in codes] == [(4, 1, 1), (4, 2, 2), (4, 4, 4)]
    assert all(torch.equal(a, b) for a, b in zip(codes, out.codes))
    torch.testing.assert_close(model.decode(codes), out.reconstruction.clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_straight_through_gradient_reaches_encoder_and_codebook():
    model = tiny_tokenizer()
    out = model(images())
    (out.reconstruction.pow(2).mean() + out.quantization_loss).backward()
    assert model.encoder.stem.weight.grad is not None and model.encoder.stem.weight.grad.abs().sum() > 0
    assert model.quantizer.embedding.weight.grad.abs().sum() > 0
    used = {phi_index(k, 3, len(model.quantizer.phis)) for k in range(3)}
    assert all(model.quantizer.phis[i].conv.weight.grad.abs().sum() > 0 for i in used)


def test_residual_error_non_increasing_with_scales():
    """With phi as the identity, each scale subtracts its best approximation: error can only shrink."""
    model = tiny_tokenizer(num_phi=0, lookup="l2")
    with torch.no_grad():
        latent = model.encoder(images(8))
        # a codebook that contains the zero vector can always leave the residual unchanged
        model.quantizer.embedding.weight[0].zero_()
        out = model.quantizer(latent)
    errors = [(acc - latent).pow(2).mean().item() for acc in out.accumulated]
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < latent.pow(2).mean().item()


def test_teacher_inputs_are_accumulated_latents_downsampled():
    model = tiny_tokenizer().eval()
    codes = model.encode(images(2))
    inputs = model.teacher_inputs(codes)
    assert inputs.shape == (2, 4 + 16, 8)
    after_first = model.quantizer.codes_to_accumulated(codes[:1])
    expected = torch.nn.functional.interpolate(after_first, size=(2, 2), mode="area").flatten(2).transpose(1, 2)
    torch.testing.assert_close(inputs[:, :4], expected)
    # the finest input is the accumulated latent after the second-to-last scale at full latent size
    after_second = model.quantizer.codes_to_accumulated(codes[:2])
    torch.testing.assert_close(inputs[:, 4:], after_second.flatten(2).transpose(1, 2))


def test_decode_from_first_k_scales_and_bad_codes():
    model = tiny_tokenizer().eval()
    codes = model.encode(images(2))
    for k in range(1, 4):
        assert model.decode(codes[:k]).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"codes of scale 1 must have shape \(b, 2, 2\)"):
        model.decode([codes[0], codes[2]])
    with pytest.raises(ValueError, match="built for 16x16"):
        model.encode(images(1, size=32))


def test_dead_code_restart_reseeds_unused_codes():
    model = tiny_tokenizer(dead_code_threshold=0.5)
    model.quantizer.usage_ema.zero_()
    model.quantizer.usage_ema[:3] = 10.0
    before = model.quantizer.embedding.weight.detach().clone()
    latent = model.encoder(images(2)).detach()
    assert model.quantizer.restart_dead_codes(latent) == 64 - 3
    after = model.quantizer.embedding.weight.detach()
    assert torch.equal(before[:3], after[:3]) and not torch.equal(before[3:], after[3:])


def test_save_load_bit_exact(tmp_path):
    model = tiny_tokenizer().eval()
    path = model.save_pretrained(tmp_path / "tok")
    assert json.loads((path / "config.json").read_text())["scale_sizes"] == [1, 2, 4]
    loaded = MultiScaleVQVAE.from_pretrained(path)
    assert loaded.config == model.config
    x = images()
    assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
    # saving over an existing model keeps a loadable directory
    model.save_pretrained(path)
    assert MultiScaleVQVAE.from_pretrained(path).config == model.config
    # a loaded model owns its weights: a file overwritten in place (as `cp` does) does not reach it
    loaded = MultiScaleVQVAE.from_pretrained(path)
    weights = path / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\x7f" * (size - size // 2))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_removed_options_load_while_off_and_are_refused_while_on(tmp_path):
    """Saved configs may hold options the tokenizer no longer has (`TokenizerConfig.REMOVED_OPTIONS`): at
    their old defaults they are dropped (the bundled demo holds some); switched on, loading fails in one
    line naming the option and the commit that still has it, from a model directory and from --init-from."""
    from nextscale.sampling.pipeline import DEMO_PIPELINE
    from nextscale.train.state import load_initial_weights

    bundled = json.loads((DEMO_PIPELINE / "tokenizer" / "config.json").read_text())
    assert {"null_code", "residual_sparsity", "residual_sparsity_scales"} <= bundled.keys()
    assert MultiScaleVQVAE.from_pretrained(DEMO_PIPELINE / "tokenizer").config == TokenizerConfig(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in bundled.items()
        if k != "class" and k not in TokenizerConfig.REMOVED_OPTIONS})
    model = tiny_tokenizer().eval()
    path = model.save_pretrained(tmp_path / "old")
    saved = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**saved, **TokenizerConfig.REMOVED_OPTIONS, "code_rate": 0}))
    loaded = MultiScaleVQVAE.from_pretrained(path)
    assert loaded.config == model.config
    x = images()
    assert all(torch.equal(a, b) for a, b in zip(model.encode(x), loaded.encode(x)))
    load_initial_weights(tiny_tokenizer(), str(path))
    for option, value in (("null_code", True), ("code_rate", 0.004), ("residual_sparsity", 0.05)):
        (path / "config.json").write_text(json.dumps({**saved, option: value}))
        for load in (MultiScaleVQVAE.from_pretrained, lambda p: load_initial_weights(tiny_tokenizer(), str(p))):
            with pytest.raises(ValueError) as error:
                load(path)
            message = str(error.value)
            assert "\n" not in message and f"{option} is {json.dumps(value)}: the option was removed" in message
            assert "commit cf98767" in message and message.startswith(str(path / "config.json"))


def test_weights_are_read_as_the_safetensors_library_reads_them(tmp_path):
    from safetensors.torch import load_file, save_file

    from nextscale.checkpoint import SAFETENSORS_DTYPES, read_safetensors

    generator = torch.Generator().manual_seed(0)
    tensors = {f"t{dtype}".replace("torch.", ""): (torch.randn(3, 5, generator=generator) * 50).to(dtype)
               for dtype in SAFETENSORS_DTYPES.values()}
    tensors |= {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    read = read_safetensors(tmp_path / "w.safetensors")
    expected = load_file(str(tmp_path / "w.safetensors"))
    assert read.keys() == expected.keys()
    assert all(read[k].dtype == v.dtype and read[k].shape == v.shape and torch.equal(read[k], v)
               for k, v in expected.items())
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-7])
    with pytest.raises(ValueError, match="bytes of data|ends inside"):
        read_safetensors(tmp_path / "cut.safetensors")


def test_from_pretrained_refuses_pickles_and_explains_missing(tmp_path):
    with pytest.raises(ValueError, match="pickled checkpoint"):
        MultiScaleVQVAE.from_pretrained(tmp_path / "weights.pth")
    with pytest.raises(FileNotFoundError, match="no model directory"):
        MultiScaleVQVAE.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        MultiScaleVQVAE.from_pretrained(tmp_path / "empty")


@pytest.fixture
def tiny_dinov2(tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=4, image_size=32)
    Dinov2Model(config).save_pretrained(tmp_path / "dino")
    return tmp_path / "dino"


def test_alignment_with_tiny_dinov2_loaded_offline(tiny_dinov2):
    teacher = FrozenVisionTeacher(tiny_dinov2, resolution=32)
    assert teacher.width == 32 and not any(p.requires_grad for p in teacher.parameters())
    x = images()
    features = teacher(x)
    assert features.shape == (4, 32, 8, 8)
    pyramid = feature_pyramid(features, (1, 2, 4))
    assert [p.shape[-1] for p in pyramid] == [1, 2, 4]
    torch.testing.assert_close(pyramid[0].flatten(1), features.mean(dim=(2, 3)))

    model = tiny_tokenizer()
    head = AlignmentHead(AlignmentConfig(teacher=str(tiny_dinov2), margin=0.1), 8, teacher.width, (1, 2, 4))
    optimizer = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(x)
        total, per_scale = head(out.accumulated, out.latent, pyramid)
        assert len(per_scale) == 3
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.5 * losses[0]


def test_alignment_teacher_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="--alignment.teacher none"):
        FrozenVisionTeacher(tmp_path / "nope")


def test_var_architecture_options_build_and_round_trip():
    """VAR's autoencoder pieces (level attention, two mid blocks, quant convs, asymmetric padding) all run."""
    model = tiny_tokenizer(mid_attention=True, mid_res_blocks=2, level_attention=True, quant_convs=True,
                           downsample_padding="asymmetric", encoder_res_blocks=2, lookup="l2").eval()
    names = set(model.state_dict())
    assert {"encoder.quant_conv.weight", "decoder.post_quant_conv.weight", "encoder.mid.2.conv1.weight"} <= names
    assert "encoder.body.1.qkv.weight" not in names and "encoder.body.7.qkv.weight" in names  # lowest level only
    assert "encoder.body.2.conv.weight" in names  # the padded stride-2 conv
    x = images()
    codes = model.encode(x)
    assert [c.shape for c in codes] == [(4, 1, 1), (4, 2, 2), (4, 4, 4)]
    assert model.decode(codes).shape == x.shape
    default = tiny_tokenizer()
    assert not any("quant_conv" in name for name in default.state_dict())
