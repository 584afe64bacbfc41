"""Perceptual and adversarial tokenizer losses: tiny real networks, loss values, training end to end."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from test_training import tokenizer_run

from nextscale.tokenizer.losses.discriminator import (
    AdversarialConfig,
    PatchDiscriminator,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
)
from nextscale.tokenizer.losses.perceptual import PerceptualConfig, PerceptualLoss, normalised_distance
from nextscale.train.tokenizer_loop import train_tokenizer


def smooth_images(batch: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory) -> dict[str, str]:
    """A tiny randomly initialised ViT (DINOv2) and ConvNet (ResNet), saved for `from_pretrained`."""
    from transformers import Dinov2Config, Dinov2Model, ResNetConfig, ResNetModel

    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=4, image_size=16)).save_pretrained(root / "dino")
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
                ).save_pretrained(root / "resnet")
    return {"vit": str(root / "dino"), "conv": str(root / "resnet")}


@pytest.mark.parametrize("kind", ["vit", "conv"])
def test_perceptual_loss_is_a_frozen_feature_distance(tiny_backbones, kind):
    loss = PerceptualLoss(PerceptualConfig(model=tiny_backbones[kind], resolution=32))
    assert not any(p.requires_grad for p in loss.parameters())
    target = smooth_images()
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    reconstruction = (target + 0.5 * torch.randn_like(target)).requires_grad_(True)
    value = loss(reconstruction, target)
    assert 0.0 < value.item() <= 4.0
    value.backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    # descending the loss moves the reconstruction towards the target's features
    with torch.no_grad():
        stepped = reconstruction - 0.5 * reconstruction.grad / reconstruction.grad.norm()
    assert loss(stepped, target).item() < value.item()


def test_perceptual_layers_and_errors(tiny_backbones, tmp_path, monkeypatch):
    target, other = smooth_images(seed=0), smooth_images(seed=1)
    everything = PerceptualLoss(PerceptualConfig(model=tiny_backbones["conv"], resolution=None))
    first = PerceptualLoss(PerceptualConfig(model=tiny_backbones["conv"], resolution=None, layers=(0,)))
    features_x = everything.features(other)
    features_y = everything.features(target)
    torch.testing.assert_close(first(other, target), normalised_distance(features_x[0], features_y[0], 1).mean())
    with pytest.raises(ValueError, match="out of range"):
        PerceptualLoss(PerceptualConfig(model=tiny_backbones["conv"], layers=(9,)))(target, target)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="--perceptual.model none"):
        PerceptualLoss(PerceptualConfig(model=str(tmp_path / "missing")))
    assert not PerceptualConfig().enabled and not PerceptualConfig(model="x", weight=0).enabled


def test_gan_losses_values():
    confident_real, confident_fake = torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0)
    assert discriminator_loss(confident_real, confident_fake, "hinge").item() == 0.0
    assert discriminator_loss(torch.zeros(2), torch.zeros(2), "hinge").item() == 1.0
    assert discriminator_loss(torch.zeros(2), torch.zeros(2), "non-saturating").item() == pytest.approx(0.6931, 1e-4)
    assert generator_loss(confident_fake, "hinge").item() == 2.0
    assert generator_loss(confident_real, "non-saturating").item() < generator_loss(confident_fake, "non-saturating")


def test_patch_discriminator_shapes_and_config_errors():
    discriminator = PatchDiscriminator(AdversarialConfig(weight=0.1, channels=8, num_layers=3), image_size=64)
    assert discriminator(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="use at most 2"):
        PatchDiscriminator(AdversarialConfig(weight=0.1, num_layers=3), image_size=16)
    with pytest.raises(ValueError, match="must be >= 0"):
        AdversarialConfig(weight=-1)
    assert not AdversarialConfig().enabled


def test_discriminator_learns_to_tell_reconstructions_from_images():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(AdversarialConfig(weight=0.1, channels=8, num_layers=2), image_size=16)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.9))
    losses = []
    for step in range(40):
        real = smooth_images(8, seed=step)
        fake = real + 0.3 * torch.randn_like(real)  # "reconstructions" with artefacts
        real_logits, fake_logits = discriminator(torch.cat([real, fake])).chunk(2)
        loss = discriminator_loss(real_logits, fake_logits, "hinge")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def gan_run(output_dir, backbone: str, **overrides):
    return tokenizer_run(
        output_dir,
        perceptual=PerceptualConfig(model=backbone, resolution=None, weight=0.1),
        adversarial=AdversarialConfig(weight=0.01, start_step=10, channels=8, num_layers=2),
        **overrides,
    )


def test_tokenizer_training_with_perceptual_and_adversarial_losses_resumes_exactly(tiny_backbones, tmp_path):
    result = train_tokenizer(gan_run(tmp_path / "run", tiny_backbones["conv"]))
    logs = result.metrics["last_train_logs"]
    assert {"perceptual", "generator", "discriminator", "logits_real", "logits_fake"} <= set(logs)
    assert all(v == v for v in logs.values())  # finite
    assert logs["logits_real"] > logs["logits_fake"]  # the discriminator tells reconstructions apart
    baseline = train_tokenizer(tokenizer_run(tmp_path / "baseline", checkpoint_every=1000, sample_every=1000))
    assert result.metrics["psnr"] > baseline.metrics["psnr"] - 2.0  # reconstruction still learned
    curve = dict(result.metrics["loss_curve"])

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run" / "checkpoints", resumed_dir / "checkpoints")
    resumed = train_tokenizer(gan_run(resumed_dir, tiny_backbones["conv"], resume="latest")).metrics
    assert resumed["resumed_at"] == [20]
    # discriminator weights, optimiser and schedule came back too: the same curve, the earlier steps included
    assert dict(resumed["loss_curve"]) == curve


def test_resuming_with_other_loss_networks_is_a_clear_error(tiny_backbones, tmp_path):
    train_tokenizer(tokenizer_run(tmp_path / "run", steps=4, checkpoint_every=2, sample_every=1000, eval_images=8))
    with pytest.raises(RuntimeError, match="--adversarial.weight"):
        train_tokenizer(gan_run(tmp_path / "run", tiny_backbones["conv"], resume="latest", steps=6))


def test_adaptive_weight_balances_gradient_norms_at_the_last_layer():
    layer = torch.nn.Linear(4, 2)
    out = layer(torch.randn(8, 4))
    reconstruction, adversarial = out.pow(2).mean(), 3.0 * out.pow(2).mean()
    weight = adaptive_weight(reconstruction, adversarial, layer.weight)
    assert weight.item() == pytest.approx(1 / 3, rel=1e-3) and not weight.requires_grad
    (reconstruction + weight * adversarial).backward()  # the graphs survive for the real backward
    assert layer.weight.grad is not None
