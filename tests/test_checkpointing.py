"""Activation checkpointing: the same loss and gradients as the plain models, the same state dicts and
exports, less peak memory, and both trainings run with --activation-checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_tokenizer_config
from test_training import tokenizer_run, var_run

from nextscale.data import DataConfig
from nextscale.plan.measure import measure_step, step_inputs
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.train.checkpointing import checkpoint_tokenizer, checkpoint_transformer, is_checkpointed
from nextscale.train.tokenizer_loop import train_tokenizer
from nextscale.train.var_loop import train_var
from nextscale.transformer import NextScaleTransformer, TransformerConfig


def transformer_loss_and_grads(checkpointed: bool, shape: TransformerConfig) -> tuple[torch.Tensor, list]:
    torch.manual_seed(0)
    model = NextScaleTransformer(shape).train()
    if checkpointed:
        assert checkpoint_transformer(model) == shape.depth
    codes, condition = step_inputs(shape, 5, 3, torch.Generator().manual_seed(1))
    inputs = torch.randn(3, shape.num_tokens - 1, shape.latent_dim, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)  # dropout and stochastic depth draw from here
    logits = model(inputs, **condition)
    loss = F.cross_entropy(logits.transpose(1, 2), codes)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("shape", [
    TransformerConfig(depth=3, width=32, num_heads=2, text_width=16, dropout=0.1, drop_path=0.2),
    TransformerConfig.var(2, width=32, num_heads=2, num_classes=5, cross_attention=False, dropout=0.1),
], ids=["text, dropout and drop path", "class, qk-norm"])
def test_checkpointed_transformer_has_the_plain_loss_and_gradients(shape):
    plain_loss, plain_grads = transformer_loss_and_grads(False, shape)
    loss, grads = transformer_loss_and_grads(True, shape)
    assert torch.equal(loss, plain_loss)  # the same masks are drawn again in the recomputation
    for plain, checkpointed in zip(plain_grads, grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-6, atol=1e-7)


def test_checkpointed_tokenizer_has_the_plain_loss_and_gradients():
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = MultiScaleVQVAE(tiny_tokenizer_config(mid_attention=True)).train()
        if checkpointed:
            assert checkpoint_tokenizer(model) > 0
        images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        out = model(images)
        loss = F.mse_loss(out.reconstruction, images) + out.quantization_loss
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]))
    (plain_loss, plain_grads), (loss, grads) = results
    assert torch.equal(loss, plain_loss)
    assert len(grads) == len(plain_grads)
    for plain, checkpointed in zip(plain_grads, grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-6, atol=1e-7)


def test_checkpointing_keeps_names_copies_and_the_plain_path_without_gradients():
    shape = TransformerConfig.preset("tiny")
    model = NextScaleTransformer(shape)
    keys = list(model.state_dict())
    checkpoint_transformer(model)
    assert checkpoint_transformer(model) == 0  # once is enough
    assert list(model.state_dict()) == keys and all(is_checkpointed(block) for block in model.blocks)
    shadow = copy.deepcopy(model)  # the weight EMA's copy runs its own weights
    shadow.blocks[0].modulation[-1].bias.data.fill_(1.0)  # opens the block's gates (zero at init)
    codes, condition = step_inputs(shape, 4, 2, torch.Generator().manual_seed(0))
    inputs = torch.randn(2, shape.num_tokens - 1, shape.latent_dim)
    with torch.no_grad():
        assert not torch.equal(shadow(inputs, **condition), model(inputs, **condition))
    assert isinstance(model.blocks[0], type(NextScaleTransformer(shape).blocks[0]))


def test_checkpointing_lowers_the_peak_of_a_training_step():
    shape = TransformerConfig.preset("tiny", depth=4)
    torch.set_num_threads(1)
    plain = measure_step(shape, 32, 16)
    checkpointed = measure_step(shape, 32, 16, checkpointing=True)
    assert checkpointed.peak < 0.8 * plain.peak


def test_both_trainings_run_checkpointed_with_the_plain_losses(tmp_path, tiny_bert_dir):
    curves = {}
    for checkpointed in (False, True):
        run = tmp_path / str(checkpointed)
        tokenizer = train_tokenizer(tokenizer_run(run / "tokenizer", steps=4, log_every=1, eval_images=8,
                                                  activation_checkpointing=checkpointed,
                                                  model=tiny_tokenizer_config(mid_attention=True)))
        transformer = train_var(var_run(run / "var", run / "tokenizer" / "model", tiny_bert_dir, steps=4,
                                        log_every=1, cache_images=32, eval_images=8, batch_size=8,
                                        activation_checkpointing=checkpointed,
                                        data=DataConfig(image_size=16, synthetic_length=64),
                                        model=TransformerConfig.preset("tiny", dropout=0.1)))
        assert is_checkpointed(transformer.model.blocks[0]) == checkpointed
        assert is_checkpointed(tokenizer.model.decoder.body[0]) == checkpointed
        curves[checkpointed] = (tokenizer.metrics["loss_curve"], transformer.metrics["loss_curve"])
        assert (run / "var" / "pipeline").is_dir()
    for plain, checkpointed in zip(curves[False], curves[True]):
        assert [step for step, _ in checkpointed] == [1, 2, 3, 4]
        assert [loss for _, loss in checkpointed] == pytest.approx([loss for _, loss in plain], rel=1e-5)


def test_the_bench_section_measures_both_ways_side_by_side():
    from bench.checkpointing import checkpointing_lines, checkpointing_section

    entry = checkpointing_section(TransformerConfig.preset("tiny", depth=3), 4, 1, torch.device("cpu"), ("no",))
    assert entry["fp32"]["memory_saved"] > 0.2
    assert entry["fp32"]["plain"]["seconds"] > 0 and entry["fp32"]["checkpointed"]["seconds"] > 0
    assert "fp32: peak" in "\n".join(checkpointing_lines(entry))
