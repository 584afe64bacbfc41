"""The official VAR checkpoints: conversion of every released shape, and parity with VAR's own outputs.

The reference data (`shared/fixtures/var-reference/` beside the repository: random weights of the
official architecture and the outputs VAR's code computed from them) is read through safetensors only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nextscale.sampling import SamplingConfig, generate
from nextscale.sampling.cli import SampleArgs
from nextscale.sampling.cli import main as sample_main
from nextscale.sampling.convert_var import ConvertArgs, convert_var, main, read_state_dict
from nextscale.sampling.pipeline import load_pipeline
from nextscale.state_mapping import ConversionError
from nextscale.tokenizer import MultiScaleVQVAE
from nextscale.transformer import NextScaleTransformer

REPOSITORY = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """`shared/fixtures/var-reference` beside the repository root; in a git worktree (whose `.git` is a file
    naming `<main>/.git/worktrees/<name>`), beside the main checkout's root."""
    roots = [REPOSITORY]
    git = REPOSITORY / ".git"
    if git.is_file() and git.read_text().startswith("gitdir:"):
        roots.append(Path(git.read_text().split(":", 1)[1].strip()).parents[2])
    candidates = [root.parent / "shared" / "fixtures" / "var-reference" for root in roots]
    return next((path for path in candidates if path.is_dir()), candidates[0])


FIXTURE = fixture_dir()
needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "expected.safetensors").is_file(),
    reason=f"the VAR reference fixture is not at {FIXTURE} (it lives in shared/ beside the repository)",
)
OFFICIAL_VAE = "vae_ch160v4096z32.pth"
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def official_state(name: str) -> dict[str, torch.Tensor]:
    """Meta tensors with exactly the names, shapes and dtypes of a released checkpoint."""
    spec = json.loads((FIXTURE / "official_shapes.json").read_text())[name]
    return {key: torch.empty(item["shape"], dtype=DTYPES[item["dtype"]], device="meta") for key, item in spec.items()}


@needs_fixture
@pytest.mark.parametrize("depth", [16, 20, 24, 30])
def test_official_checkpoints_convert_with_every_key_mapped(depth: int) -> None:
    vae, var = official_state(OFFICIAL_VAE), official_state(f"var_d{depth}.pth")
    converted = convert_var(vae, var)  # raises on any unmapped, missing or mis-shaped key
    config = converted.transformer_config
    assert (config.depth, config.width, config.num_heads, config.num_classes) == (depth, 64 * depth, depth, 1000)
    assert config.qk_norm and not config.key_bias and not config.cross_attention
    # every official parameter lands in our model; only buffers we recompute (and VAR's usage statistic) drop
    buffers = {"lvl_1L", "attn_bias_for_masking", *(f"blocks.{i}.attn.zero_k_bias" for i in range(depth))}
    assert sum(t.numel() for t in converted.transformer_state.values()) == sum(
        t.numel() for key, t in var.items() if key not in buffers and key != "pos_start"
    )
    assert sum(t.numel() for t in converted.tokenizer_state.values()) == sum(
        t.numel() for key, t in vae.items() if key != "quantize.ema_vocab_hit_SV"
    )
    tokenizer = converted.tokenizer_config
    assert (tokenizer.encoder_channels, tokenizer.channel_mult, tokenizer.vocab_size) == (160, (1, 1, 2, 2, 4), 4096)


@needs_fixture
def test_unmapped_or_misshaped_keys_are_refused() -> None:
    vae, var = official_state(OFFICIAL_VAE), official_state("var_d16.pth")
    with pytest.raises(ConversionError, match=r"does not map: shared_ada_lin\.1\.weight"):
        convert_var(vae, {**var, "shared_ada_lin.1.weight": torch.empty(6144, 1024, device="meta")})
    with pytest.raises(ConversionError, match="has no 'quant_conv.weight'"):
        convert_var({k: v for k, v in vae.items() if not k.startswith("quant_conv")}, var)
    wrong = {**var, "blocks.3.ffn.fc2.bias": torch.empty(1000, device="meta")}
    with pytest.raises(ConversionError, match=r"wrong shapes .*blocks\.3\.mlp\.fc2\.bias \(1000,\) vs \(1024,\)"):
        convert_var(vae, wrong)


@needs_fixture
def test_buffers_are_checked_against_ours() -> None:
    vae, var = load_file(str(FIXTURE / "vqvae.safetensors")), load_file(str(FIXTURE / "var.safetensors"))
    with pytest.raises(ConversionError, match="zero_k_bias is not zero"):
        convert_var(vae, {**var, "blocks.1.attn.zero_k_bias": torch.ones(64)})
    causal = var["attn_bias_for_masking"]
    with pytest.raises(ConversionError, match="not the block-causal mask"):
        convert_var(vae, {**var, "attn_bias_for_masking": torch.zeros_like(causal)})  # sees every token
    without_buffers = {key: value for key, value in var.items() if key not in ("lvl_1L", "attn_bias_for_masking")}
    assert convert_var(vae, without_buffers).transformer_config.depth == 2  # recomputed, so optional


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    if not (FIXTURE / "expected.safetensors").is_file():
        pytest.skip(f"the VAR reference fixture is not at {FIXTURE}")
    return load_file(str(FIXTURE / "expected.safetensors"))


@pytest.fixture(scope="module")
def converted_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (FIXTURE / "expected.safetensors").is_file():
        pytest.skip(f"the VAR reference fixture is not at {FIXTURE}")
    out = tmp_path_factory.mktemp("var") / "pipeline"
    main(ConvertArgs(vae=FIXTURE / "vqvae.safetensors", var=FIXTURE / "var.safetensors", out=out))
    return out


def test_tokenizer_gives_the_reference_codes_at_every_scale(converted_pipeline, reference) -> None:
    tokenizer = MultiScaleVQVAE.from_pretrained(converted_pipeline / "tokenizer")
    images = reference["images"]
    with torch.no_grad():
        latent = tokenizer.encoder(images)
        codes = tokenizer.encode(images)
        accumulated = tokenizer.quantizer.codes_to_accumulated(codes)
        reconstruction = tokenizer.decode(codes)
        teacher_inputs = tokenizer.teacher_inputs(codes)
    torch.testing.assert_close(latent, reference["vqvae.latent"], atol=1e-4, rtol=0)
    for scale, code in enumerate(codes):
        assert torch.equal(code, reference[f"vqvae.codes.{scale}"]), f"scale {scale}"
    torch.testing.assert_close(accumulated, reference["vqvae.f_hat"], atol=1e-4, rtol=0)
    torch.testing.assert_close(teacher_inputs, reference["var.teacher_input"], atol=1e-4, rtol=0)
    torch.testing.assert_close(reconstruction, reference["vqvae.reconstruction"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("null", [False, True], ids=["labels", "null-class"])
def test_teacher_forced_logits_match_the_reference(converted_pipeline, reference, null: bool) -> None:
    transformer = NextScaleTransformer.from_pretrained(converted_pipeline / "transformer")
    labels = torch.full((2,), transformer.config.null_class) if null else reference["var.labels"]
    with torch.no_grad():
        logits = transformer(reference["var.teacher_input"], labels=labels)  # (2, 680, 4096)
    suffix = "_uncond" if null else ""
    torch.testing.assert_close(logits[:, :155], reference[f"var.logits{suffix}"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[:, :, ::64], reference[f"var.logits{suffix}_stride64"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits.logsumexp(-1), reference[f"var.logits{suffix}_lse"], atol=1e-4, rtol=0)


def test_converted_pipeline_loads_class_conditional(converted_pipeline) -> None:
    pipeline = load_pipeline(converted_pipeline)
    assert pipeline.text_encoder is None and pipeline.transformer.config.num_classes == 1000
    assert json.loads((converted_pipeline / "pipeline.json").read_text())["text_encoder"] is None


@needs_fixture
def test_pth_files_are_read_as_plain_tensors(tmp_path: Path) -> None:
    state = load_file(str(FIXTURE / "var.safetensors"))
    torch.save(state, tmp_path / "var.pth")
    loaded = read_state_dict(tmp_path / "var.pth")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({"model": state, "step": Path("x")}, tmp_path / "pickled.pth")  # an object weights_only refuses
    with pytest.raises(ConversionError, match="not a plain tensor state dict"):
        read_state_dict(tmp_path / "pickled.pth")


@needs_fixture
def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "nextscale.sampling.convert_var", "--vae", str(FIXTURE / "var.safetensors"),
               "--var", str(FIXTURE / "var.safetensors"), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "encoder.conv_in.weight" in result.stderr and not (tmp_path / "out").exists()


def test_greedy_guided_sampling_writes_the_reference_images(converted_pipeline, reference, tmp_path: Path) -> None:
    """`sample.py --class-label 207 --class-label 980 --cfg 4 --top-k 1` on the converted fixture: VAR's codes at
    every scale and its images up to PNG rounding."""
    pipeline = load_pipeline(converted_pipeline)
    result = generate(pipeline, [207, 980], 0, SamplingConfig(cfg_scale=4.0, top_k=1))
    for scale, code in enumerate(result.codes):
        assert torch.equal(code, reference[f"sample.codes.{scale}"]), f"scale {scale}"
    torch.testing.assert_close(result.images * 0.5 + 0.5, reference["sample.images"], atol=1e-3, rtol=0)

    # the reference's pixels come from a float32 decoder (sample.py's default decoder may run in bf16)
    paths = sample_main(SampleArgs(class_label=(207, 980), cfg=4.0, top_k=1, checkpoint=str(converted_pipeline),
                                   out=tmp_path, progress=False, grid=False, decoder_dtype="float32"))
    assert [path.name for path in paths] == ["0000-class-207.png", "0001-class-980.png"]  # --no-grid: no grid.png
    written = torch.stack([torch.from_numpy(np.array(Image.open(path))) for path in paths])  # (2, H, W, 3)
    expected = (reference["sample.images"].permute(0, 2, 3, 1) * 255).round()
    assert (written.float() - expected).abs().max() <= 1  # PNG rounding


def test_sample_cli_says_which_condition_the_checkpoint_takes(converted_pipeline, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"class-conditional: pass --class-label N \(0\.\.999\)"):
        sample_main(SampleArgs(prompt=("a cat",), checkpoint=str(converted_pipeline), out=tmp_path))
    with pytest.raises(ValueError, match=r"must be in \[0, 1000\), got \[1000\]"):
        sample_main(SampleArgs(class_label=(1000,), checkpoint=str(converted_pipeline), out=tmp_path))
    with pytest.raises(ValueError, match="either --class-label .* or --prompt"):
        sample_main(SampleArgs(class_label=(1,), prompt=("a cat",), checkpoint=str(converted_pipeline), out=tmp_path))
