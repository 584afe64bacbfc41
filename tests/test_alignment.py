"""Where the alignment gradient goes: encoder, codebook, phi convs, never the decoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_tokenizer_config

from nextscale.data import DataConfig
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.tokenizer.losses.alignment import AlignmentConfig, AlignmentHead, alignment_inputs
from nextscale.train.tokenizer_loop import TokenizerObjective, TokenizerTrainConfig

TEACHER_WIDTH = 12
SCALES = (1, 2, 4)


def setup(gradient: str, seed: int = 0) -> tuple[MultiScaleVQVAE, AlignmentHead, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = MultiScaleVQVAE(tiny_tokenizer_config())
    head = AlignmentHead(AlignmentConfig(teacher="tiny", gradient=gradient, projection_width=16), 8, TEACHER_WIDTH,
                         SCALES)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 16, 16, generator=generator) * 2 - 1
    pyramid = [torch.randn(4, TEACHER_WIDTH, s, s, generator=generator) for s in SCALES]
    return model, head, images, pyramid


def grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def alignment_gradients(gradient: str) -> dict[str, float]:
    model, head, images, pyramid = setup(gradient)
    out = model(images)
    loss, _ = head(out.accumulated, out.latent, pyramid)
    loss.backward()
    return {"encoder": grad_norm(model.encoder), "decoder": grad_norm(model.decoder),
            "codebook": grad_norm(model.quantizer.embedding), "phi": grad_norm(model.quantizer.phis)}


def test_the_last_scale_alone_is_the_weights_zero_then_one():
    config = AlignmentConfig(teacher="tiny", scales="last", projection_width=16)
    head = AlignmentHead(config, 8, TEACHER_WIDTH, SCALES)
    assert head.scale_weights == (0.0, 0.0, 1.0)
    explicit = AlignmentHead(dataclasses.replace(config, scales="all", scale_weights=(0.0, 0.0, 1.0)), 8,
                             TEACHER_WIDTH, SCALES)
    explicit.load_state_dict(head.state_dict())
    model, _, images, pyramid = setup("straight_through")
    out = model(images)
    total, per_scale = head(out.accumulated, out.latent, pyramid)
    assert torch.equal(total, per_scale[-1]) and torch.equal(total, explicit(out.accumulated, out.latent, pyramid)[0])
    every = AlignmentHead(dataclasses.replace(config, scales="all"), 8, TEACHER_WIDTH, SCALES)
    assert every.scale_weights == (1.0,) * 3


def test_straight_through_alignment_reaches_the_encoder_and_not_the_decoder():
    norms = alignment_gradients("straight_through")
    assert norms["encoder"] > 0 and norms["codebook"] > 0 and norms["phi"] > 0, norms
    assert norms["decoder"] == 0, norms


def test_latent_alignment_reaches_the_encoder_only():
    norms = alignment_gradients("latent")
    assert norms["encoder"] > 0, norms
    assert norms["decoder"] == 0 and norms["codebook"] == 0 and norms["phi"] == 0, norms


def test_codebook_alignment_keeps_the_former_behaviour():
    norms = alignment_gradients("codebook")
    assert norms["encoder"] == 0 and norms["decoder"] == 0, norms
    assert norms["codebook"] > 0 and norms["phi"] > 0, norms


def test_straight_through_inputs_have_the_values_of_the_partial_sums():
    model, _, images, _ = setup("straight_through")
    out = model(images)
    inputs = alignment_inputs(out.accumulated, out.latent, SCALES, "straight_through")
    assert all(torch.equal(a, b) for a, b in zip(inputs, out.accumulated))
    pooled = alignment_inputs(out.accumulated, out.latent, SCALES, "latent")
    assert [tuple(p.shape[-2:]) for p in pooled] == [(1, 1), (2, 2), (4, 4)]
    torch.testing.assert_close(pooled[0].flatten(1), out.latent.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="straight_through, latent or codebook"):
        alignment_inputs(out.accumulated, out.latent, SCALES, "decoder")


def test_same_loss_value_whatever_the_gradient_path():
    """The straight-through path changes where the gradient goes, not the loss."""
    losses = {}
    for gradient in ("straight_through", "codebook"):
        model, head, images, pyramid = setup(gradient)
        out = model(images)
        losses[gradient] = head(out.accumulated, out.latent, pyramid)[0]
    assert torch.equal(losses["straight_through"], losses["codebook"])


def test_alignment_weight_zero_changes_nothing():
    """Weight 0: the tokenizer's gradients are bit-identical to training without alignment."""
    grads = {}
    for name, weight in (("off", None), ("zero", 0.0)):
        model, head, images, pyramid = setup("straight_through")
        config = TokenizerTrainConfig(model=model.config, data=DataConfig(image_size=16), tracker="none")
        if weight is not None:
            config = dataclasses.replace(config, alignment=AlignmentConfig(teacher="tiny", weight=weight))
        objective = TokenizerObjective(model, head if weight is not None else None, config)
        losses = objective(images, pyramid if weight is not None else None)
        losses["loss"].backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[name + "_loss"] = losses["loss"].detach()
    assert grads["off"].keys() == grads["zero"].keys()
    assert all(torch.equal(grads["off"][n], grads["zero"][n]) for n in grads["off"])
    assert torch.equal(grads["off_loss"], grads["zero_loss"])


def test_the_encoder_receives_the_gradient_the_partials_would():
    """Straight-through: d loss / d latent is the sum over scales of d loss / d partial_k."""
    model, head, images, pyramid = setup("straight_through")
    out = model(images)
    partials = [p.detach().requires_grad_() for p in out.accumulated]
    latent = out.latent.detach().requires_grad_()
    loss, _ = head(partials, latent, pyramid)
    loss.backward()
    torch.testing.assert_close(latent.grad, sum(p.grad for p in partials))


def test_latent_alignment_alone_moves_the_encoder_towards_the_teacher():
    """Training only the encoder (projections fixed) on the latent alignment lowers it."""
    model, head, images, pyramid = setup("latent")
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        out = model(images)
        loss, _ = head(out.accumulated, out.latent, pyramid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01, losses
