"""int8 weights on the CPU (`load_pipeline(dtype="int8")`, `sample.py --dtype int8`) and the bf16 decoder
beside a float32 pipeline (`decoder_dtype="auto"`): they load, sample, edit and zoom, stay close to float32
and follow the prompts as float32 does (docs/experiments/int8-and-fast-decoder.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_tokenizer_config, tiny_transformer
from test_demo import PROMPTS, assert_follows_the_prompts, teacher_forced_logits

from nextscale.sampling.cli import SampleArgs
from nextscale.sampling.cli import main as sample_main
from nextscale.sampling.editing import inpaint
from nextscale.sampling.pipeline import load_pipeline, write_pipeline
from nextscale.sampling.precision import (
    Int8Linear,
    fold_query_value_biases,
    has_native_bf16,
    is_int8,
    quantize_int8,
)
from nextscale.sampling.sampler import SamplingConfig, generate
from nextscale.sampling.zoom import ZoomOptions, zoom
from nextscale.tokenizer import MultiScaleVQVAE


@pytest.fixture(scope="module")
def demo():
    return load_pipeline(None)


@pytest.fixture(scope="module")
def demo_int8():
    return load_pipeline(None, dtype="int8", decoder_dtype="auto")


def test_int8_keeps_the_small_embedding_and_folds_no_key_bias_exactly() -> None:
    """Every linear layer but the latent embedding and the head becomes int8; VAR's separate query/value biases are
    folded into `qkv` first, which alone changes nothing."""
    config = tiny_tokenizer_config()
    model = tiny_transformer(config, num_classes=5, cross_attention=False, qk_norm=True, key_bias=False)
    labels = torch.tensor([0, 4, 5])
    inputs = torch.randn(3, model.config.num_tokens - 1, model.config.latent_dim)
    with torch.no_grad():
        before = model(inputs, labels=labels)
        for module in model.modules():
            fold_query_value_biases(module)
        torch.testing.assert_close(model(inputs, labels=labels), before, atol=1e-5, rtol=0)
        quantize_int8(model)
        after = model(inputs, labels=labels)
    assert is_int8(model) and isinstance(model.blocks[0].mlp.fc1, Int8Linear)
    assert isinstance(model.input_embed, torch.nn.Linear) and isinstance(model.head, torch.nn.Linear)
    with pytest.raises(ValueError, match="an int8 model is for sampling"):
        model.state_dict()
    assert float((after.argmax(-1) == before.argmax(-1)).float().mean()) >= 0.8


def test_int8_is_refused_off_the_cpu_and_names_are_checked(tiny_pipeline_dir: Path) -> None:
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        load_pipeline(tiny_pipeline_dir, device="meta", dtype="int8")
    with pytest.raises(ValueError, match="dtype must be a torch.dtype or 'int8'"):
        load_pipeline(tiny_pipeline_dir, dtype="int4")
    with pytest.raises(ValueError, match="decoder_dtype must be one of"):
        load_pipeline(tiny_pipeline_dir, decoder_dtype="int8")


def test_bundled_int8_follows_the_prompts_and_stays_close_to_float32(demo, demo_int8) -> None:
    """The int8 model's teacher-forced logits on its own samples: the same most likely code as float32 for
    >= 85% of the tokens (92% measured) and a mean |difference| within 6% of the logits' spread (3%
    measured); its samples follow the prompts as float32's do (the judge, as tests/test_demo.py)."""
    prompts = list(PROMPTS)
    result = generate(demo_int8, prompts, seeds=[0, 1, 2, 3], config=SamplingConfig(cfg_scale=4.0))
    assert result.images.dtype == torch.float32 and result.images.shape == (4, 3, 64, 64)
    assert_follows_the_prompts(result.images)
    with torch.no_grad():
        teacher_inputs = demo.tokenizer.teacher_inputs(result.codes)
    full = teacher_forced_logits(demo, teacher_inputs, prompts, torch.float32)
    low = teacher_forced_logits(demo_int8, teacher_inputs, prompts, torch.float32)
    assert float((full.argmax(-1) == low.argmax(-1)).float().mean()) >= 0.85
    assert float((full - low).abs().mean()) <= 0.06 * float(full.std())


def test_bundled_int8_edits(demo_int8) -> None:
    made = generate(demo_int8, ["a man on a blue background"], seeds=[0], config=SamplingConfig(cfg_scale=2.0))
    known = torch.ones(1, 64, 64, dtype=torch.bool)
    known[:, 16:48, 16:48] = False
    painted = inpaint(demo_int8, made.images, known, ["a man with glasses on a blue background"], seeds=[7],
                      config=SamplingConfig(cfg_scale=2.0))
    assert painted.images.shape == (1, 3, 64, 64) and painted.images.dtype == torch.float32
    outside = (painted.images - made.images).abs()[:, :, ~known[0]]
    assert float((painted.images - made.images).abs()[:, :, known[0]].mean()) < float(outside.mean())


def test_fast_decoder_is_close_to_float32_and_float32_is_exact(demo, demo_int8) -> None:
    """`decoder_dtype="auto"`: a bf16 channels-last decoder on a CPU with native bf16 (the images within a
    few 8-bit levels of float32's), the latent and the images float32; float32 decodes as the pipeline."""
    codes = generate(demo, list(PROMPTS), seeds=[0, 1, 2, 3], config=SamplingConfig(cfg_scale=2.0)).codes
    with torch.no_grad():
        latent = demo.tokenizer.quantizer.codes_to_accumulated(codes)
        exact = demo.tokenizer.decode_latent(latent)
        fast = demo_int8.tokenizer.decode_latent(latent)
    assert fast.dtype == torch.float32 and fast.is_contiguous()
    expected = torch.bfloat16 if has_native_bf16() else torch.float32
    assert next(demo_int8.tokenizer.decoder.parameters()).dtype == expected
    assert next(demo_int8.tokenizer.quantizer.parameters()).dtype == torch.float32
    assert float((fast - exact).abs().max()) <= 0.05 and float((fast - exact).abs().mean()) <= 0.005
    pinned = load_pipeline(None, decoder_dtype="float32")
    with torch.no_grad():
        assert torch.equal(pinned.tokenizer.decode_latent(latent), exact)


def test_class_conditional_int8_samples_and_zooms_text(tmp_path: Path, tiny_pipeline_dir: Path) -> None:
    """A tiny class-conditional pipeline (VAR's attention) samples in int8 greedily close to float32; the
    text one zooms in int8 and `sample.py --dtype int8` writes its images."""
    tokenizer_config = tiny_tokenizer_config()
    torch.manual_seed(0)
    transformer = tiny_transformer(tokenizer_config, num_classes=5, cross_attention=False, qk_norm=True,
                                   key_bias=False)
    directory = write_pipeline(tmp_path / "classes", MultiScaleVQVAE(tokenizer_config).eval(), transformer, None, None)
    greedy = SamplingConfig(cfg_scale=2.0, top_k=1)
    full = generate(load_pipeline(directory), [3, 1, 0, 4], 0, greedy)
    low = generate(load_pipeline(directory, dtype="int8"), [3, 1, 0, 4], 0, greedy)
    equal = torch.cat([(a == b).flatten() for a, b in zip(full.codes, low.codes)]).float().mean()
    assert float(equal) >= 0.5 and low.images.shape == full.images.shape

    text = load_pipeline(tiny_pipeline_dir, dtype="int8")
    stack = zoom(text, ["a man with glasses", "a woman"], 0, SamplingConfig(cfg_scale=2.0), ZoomOptions(factor=2))
    assert len(stack.levels) == 2 and stack.levels[0].shape == (1, 3, 16, 16)
    written = sample_main(SampleArgs(prompt=("a man with a beard",), num_images=2, checkpoint=str(tiny_pipeline_dir),
                                     dtype="int8", out=tmp_path / "out", progress=False))
    assert (tmp_path / "out" / "grid.png") in written and len(written) == 3
