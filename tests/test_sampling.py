"""Sampling: filtering and guidance edge cases, cache parity, seeding, guidance switch-off, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from PIL import Image

from nextscale.images import grid_columns, make_grid, to_arrays
from nextscale.sampling import pipeline as pipeline_module
from nextscale.sampling.cli import SampleArgs, main
from nextscale.sampling.filtering import (
    Candidates,
    candidates,
    draw,
    filter_logits,
    sample_codes,
    top_k_filter,
    top_p_filter,
)
from nextscale.sampling.guidance import guidance_strengths, guided_logits, unconditional_rows_needed
from nextscale.sampling.outputs import image_stem, slugify
from nextscale.sampling.pipeline import Pipeline
from nextscale.sampling.sampler import SamplingConfig, encode_text, generate
from nextscale.scales import scale_offsets, split_scales

PROMPTS = ["a man with a beard", "a woman with red hair", "a portrait with glasses", "blue background"]
NEG_INF = float("-inf")


@contextmanager
def recorded_logits(pipeline: Pipeline) -> Iterator[list[torch.Tensor]]:
    """Every output of the transformer's head (its raw logits) during the block."""
    outputs: list[torch.Tensor] = []
    handle = pipeline.transformer.head.register_forward_hook(
        lambda module, args, output: outputs.append(output.clone())
    )
    try:
        yield outputs
    finally:
        handle.remove()


def assert_same_codes(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# -- filtering ---------------------------------------------------------------------------------------


def test_top_k_edge_cases() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    for no_op in (None, 0, 4, 10):
        assert torch.equal(top_k_filter(logits, no_op), logits)
    assert torch.equal(top_k_filter(logits, 1), torch.tensor([[NEG_INF, 3.0, NEG_INF, NEG_INF]]))
    assert torch.equal(top_k_filter(logits, 2), torch.tensor([[NEG_INF, 3.0, 2.0, NEG_INF]]))


def test_top_p_edge_cases() -> None:
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.3, 0.05]]))
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    for top_p, kept in [
        (0.0, [0, 1, 0, 0]),
        (1e-9, [0, 1, 0, 0]),
        (0.45, [0, 1, 0, 0]),
        (0.7, [0, 1, 1, 0]),
        (0.85, [1, 1, 1, 0]),
    ]:  # top_p 0: the argmax stays, never an empty distribution
        assert torch.isfinite(top_p_filter(logits, top_p)).long().tolist() == [kept], top_p


def test_filtering_never_produces_nan_with_infinite_logits() -> None:
    logits = torch.tensor([[NEG_INF, 2.0, NEG_INF, 1.0], [NEG_INF, NEG_INF, NEG_INF, NEG_INF]])
    for top_k, top_p in [(None, 1.0), (1, 1.0), (3, 0.5), (None, 0.0), (2, 1e-9)]:
        filtered = filter_logits(logits, top_k, top_p, temperature=0.7)
        assert not torch.isnan(filtered).any()
        assert not torch.isnan(filtered[:1].softmax(dim=-1)).any()
    with pytest.raises(ValueError, match="greedy"):
        filter_logits(logits, temperature=0.0)


def test_sample_codes_respects_filters_and_generators() -> None:
    logits = torch.randn(2, 50, 16, generator=torch.Generator().manual_seed(0))

    def draw(seed: int, **options: object) -> torch.Tensor:
        return sample_codes(logits, [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(7)], **options)

    greedy = logits.argmax(dim=-1)
    assert torch.equal(draw(0, temperature=0.0), greedy)
    assert torch.equal(draw(0, top_k=1), greedy)
    assert torch.equal(draw(0, top_p=0.0), greedy)
    allowed = torch.isfinite(top_k_filter(logits, 3))
    assert allowed.gather(-1, draw(0, top_k=3).unsqueeze(-1)).all()  # only the 3 best codes are drawn
    first, second = draw(0), draw(1)
    assert torch.equal(draw(0), first) and not torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])  # row 1 depends only on its own generator
    with pytest.raises(ValueError, match="NaN"):
        sample_codes(torch.full((1, 2, 4), float("nan")), [torch.Generator()])
    with pytest.raises(ValueError, match="all -inf"):
        sample_codes(torch.full((1, 2, 4), NEG_INF), [torch.Generator()])
    with pytest.raises(ValueError, match="one per image"):
        sample_codes(logits, [torch.Generator()])


@pytest.mark.parametrize(
    "top_k, top_p, temperature",
    [(None, 1.0, 1.0), (7, 1.0, 0.5), (None, 0.8, 1.0), (10, 0.9, 1.3), (1, 0.5, 1.0), (5, 0.0, 2.0), (64, 0.95, 1.0)],
)
def test_candidates_are_the_reference_distribution(top_k: int | None, top_p: float, temperature: float) -> None:
    logits = 2 * torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    logits[0, 0, :60] = NEG_INF  # fewer finite logits than top_k keeps
    kept = candidates(logits, top_k, top_p, temperature)
    compact = torch.zeros_like(logits).scatter_add_(-1, kept.codes, kept.weights)  # back to vocabulary order
    compact = compact / compact.sum(dim=-1, keepdim=True)
    reference = filter_logits(logits, top_k, top_p, temperature).softmax(dim=-1)
    torch.testing.assert_close(compact, reference, atol=1e-6, rtol=1e-5)


def test_inverse_cdf_draw_skips_removed_codes() -> None:
    weights = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(6, 4)  # unnormalised is fine
    kept = Candidates(codes=torch.tensor([[5, 6, 7, 8]]).expand(6, 4), weights=weights * 2)
    uniforms = torch.tensor([0.0, 0.05, 0.1, 0.69, 0.71, 0.999999])
    assert draw(kept, uniforms).tolist() == [5, 5, 7, 7, 8, 8]  # code 6 (weight 0) is never drawn


def test_sample_codes_frequencies_follow_the_filtered_distribution() -> None:
    logits = torch.log(torch.tensor([0.05, 0.4, 0.25, 0.2, 0.1])).expand(1, 20000, 5)
    codes = sample_codes(logits, [torch.Generator().manual_seed(3)], top_k=3, top_p=1.0)
    frequencies = torch.bincount(codes.flatten(), minlength=5).float() / codes.numel()
    expected = torch.tensor([0.0, 0.4, 0.25, 0.2, 0.0]) / 0.85
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)


# -- guidance ----------------------------------------------------------------------------------------


def test_guidance_strength_schedules() -> None:
    assert guidance_strengths(5, 4.0, "linear") == [0.0, 1.0, 2.0, 3.0, 4.0]  # VAR: t_k = cfg * k / (K - 1)
    assert guidance_strengths(3, 4.0, "constant") == [4.0, 4.0, 4.0]
    assert guidance_strengths(5, 4.0, "linear", guidance_off_last=2) == [0.0, 1.0, 2.0, 0.0, 0.0]
    assert guidance_strengths(1, 2.0, "linear") == [2.0]
    assert guidance_strengths(3, 4.0, "constant", guidance_off_last=9) == [0.0, 0.0, 0.0]
    assert unconditional_rows_needed([0.0, 1.0, 2.0, 0.0, 0.0]) == [True, True, True, False, False]
    assert unconditional_rows_needed([0.0, 0.0]) == [False, False]
    with pytest.raises(ValueError, match="schedule"):
        guidance_strengths(3, 1.0, "cosine")  # type: ignore[arg-type]


def test_guided_logits_formula_and_infinities() -> None:
    conditional = torch.tensor([1.0, 2.0, NEG_INF, 0.5])
    unconditional = torch.tensor([0.5, 3.0, 1.0, NEG_INF])
    assert torch.equal(guided_logits(conditional, unconditional, 0.0), conditional)
    guided = guided_logits(conditional, unconditional, 2.0)
    assert guided.tolist() == [2.0, 0.0, NEG_INF, 0.5]  # (1 + t) c - t u; -inf rules stay, no NaN
    assert torch.equal(guided_logits(conditional, conditional, 3.0)[:2], conditional[:2])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cfg_scale": -1.0}, "cfg_scale"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"guidance_off_last": -1}, "guidance_off_last"),
        ({"guidance_schedule": "cosine"}, "guidance_schedule"),
    ],
)
def test_sampling_config_validation(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**overrides)  # type: ignore[arg-type]


# -- the inference loop -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(),
        SamplingConfig(guidance_off_last=1),
        SamplingConfig(cfg_scale=2.0, guidance_schedule="constant", top_k=8, top_p=0.8, temperature=0.7),
    ],
    ids=["default", "guidance_off_last_1", "constant_filtered"],
)
def test_cached_equals_uncached_reference(tiny_pipeline: Pipeline, config: SamplingConfig) -> None:
    offsets = scale_offsets(tiny_pipeline.transformer.config.scale_sizes)
    with recorded_logits(tiny_pipeline) as cached_logits:
        cached = generate(tiny_pipeline, PROMPTS[:2], [3, 4], config)
    with recorded_logits(tiny_pipeline) as reference_logits:
        reference = generate(tiny_pipeline, PROMPTS[:2], [3, 4], config, reference=True)
    assert len(cached_logits) == len(reference_logits) == len(offsets) - 1
    for scale, (incremental, full) in enumerate(zip(cached_logits, reference_logits)):
        assert full.shape[1] == offsets[scale + 1]  # the reference recomputed the whole prefix
        torch.testing.assert_close(incremental, full[:, offsets[scale] :], atol=1e-5, rtol=1e-5)
    assert_same_codes(cached.codes, reference.codes)
    torch.testing.assert_close(cached.images, reference.images, atol=1e-5, rtol=1e-5)


def test_prefix_forward_equals_the_full_teacher_forced_pass(tiny_pipeline: Pipeline) -> None:
    """The reference path runs `forward(..., num_scales=k)`: block causality makes it the full pass's prefix."""
    result = generate(tiny_pipeline, PROMPTS[:2], [0, 1])
    offsets = scale_offsets(tiny_pipeline.transformer.config.scale_sizes)
    with torch.no_grad():
        text = encode_text(tiny_pipeline, PROMPTS[:2], False, torch.float32)
        teacher_inputs = tiny_pipeline.tokenizer.teacher_inputs(result.codes)
        full = tiny_pipeline.transformer(teacher_inputs, **text)
        for num_scales in range(1, len(result.codes) + 1):
            prefix = teacher_inputs[:, : offsets[num_scales] - offsets[1]]
            logits = tiny_pipeline.transformer(prefix, **text, num_scales=num_scales)
            torch.testing.assert_close(logits, full[:, : offsets[num_scales]], atol=1e-5, rtol=1e-5)


def test_output_shape_dtype_range_and_codes(tiny_pipeline: Pipeline) -> None:
    result = generate(tiny_pipeline, PROMPTS[:3], seeds=5)
    size = tiny_pipeline.tokenizer.config.image_size
    assert result.images.shape == (3, 3, size, size) and result.images.dtype == torch.float32
    assert result.images.min() >= -1 and result.images.max() <= 1
    assert result.seeds == [5, 6, 7] and result.progression is None
    for code, side in zip(result.codes, tiny_pipeline.transformer.config.scale_sizes):
        assert code.shape == (3, side, side) and code.dtype == torch.long
        assert 0 <= int(code.min()) and int(code.max()) < tiny_pipeline.transformer.config.vocab_size


def test_seeds_determine_images_and_calls_do_not_leak_state(tiny_pipeline: Pipeline) -> None:
    first = generate(tiny_pipeline, PROMPTS[:1], [11])
    again = generate(tiny_pipeline, PROMPTS[:1], [11])  # a second call: a fresh cache, the same image
    other = generate(tiny_pipeline, PROMPTS[:1], [12])
    assert_same_codes(first.codes, again.codes)
    assert torch.equal(first.images, again.images)
    assert not all(torch.equal(a, b) for a, b in zip(first.codes, other.codes))
    assert not torch.equal(first.images, other.images)


def test_batch_with_per_image_seeds_equals_single_calls(tiny_pipeline: Pipeline) -> None:
    seeds = [21, 22, 23, 24]
    batch = generate(tiny_pipeline, PROMPTS, seeds)
    for index, (prompt, seed) in enumerate(zip(PROMPTS, seeds)):
        single = generate(tiny_pipeline, [prompt], [seed])
        assert_same_codes([code[index : index + 1] for code in batch.codes], single.codes)
        torch.testing.assert_close(batch.images[index : index + 1], single.images, atol=1e-5, rtol=1e-5)


def test_cfg_zero_is_the_conditional_only_path(tiny_pipeline: Pipeline) -> None:
    num_scales = tiny_pipeline.transformer.config.num_scales
    with recorded_logits(tiny_pipeline) as logits:
        unguided = generate(tiny_pipeline, PROMPTS[:2], [1, 2], SamplingConfig(cfg_scale=0.0))
    assert [rows.shape[0] for rows in logits] == [2] * num_scales  # no unconditional rows were run
    switched_off = generate(tiny_pipeline, PROMPTS[:2], [1, 2], SamplingConfig(guidance_off_last=num_scales))
    assert_same_codes(unguided.codes, switched_off.codes)
    guided = generate(tiny_pipeline, PROMPTS[:2], [1, 2], SamplingConfig(cfg_scale=4.0))
    assert torch.equal(guided.codes[0], unguided.codes[0])  # the linear schedule's t_0 = 0
    assert not all(torch.equal(a, b) for a, b in zip(guided.codes, unguided.codes))


def test_guidance_off_last_uses_conditional_logits_on_those_scales(tiny_pipeline: Pipeline) -> None:
    config = SamplingConfig(cfg_scale=3.0, guidance_off_last=1, temperature=0.0)  # greedy: codes = argmax
    strengths = guidance_strengths(3, 3.0, "linear", 1)
    with recorded_logits(tiny_pipeline) as logits:
        result = generate(tiny_pipeline, PROMPTS[:2], [0, 1], config)
    assert [rows.shape[0] for rows in logits] == [4, 4, 2]  # unconditional rows dropped on the last scale
    assert torch.equal(result.codes[-1].flatten(1), logits[-1].argmax(dim=-1))
    guided = guided_logits(logits[1][:2], logits[1][2:], strengths[1])
    assert torch.equal(result.codes[1].flatten(1), guided.argmax(dim=-1))
    # the conditional rows kept their cache when the unconditional half was dropped
    with torch.no_grad():
        text = encode_text(tiny_pipeline, PROMPTS[:2], False, torch.float32)
        teacher_forced = tiny_pipeline.transformer(tiny_pipeline.tokenizer.teacher_inputs(result.codes), **text)
    for scale, expected in enumerate(split_scales(teacher_forced, tiny_pipeline.transformer.config.scale_sizes)):
        torch.testing.assert_close(logits[scale][:2], expected, atol=1e-5, rtol=1e-5)


def test_progression_ends_with_the_image(tiny_pipeline: Pipeline) -> None:
    result = generate(tiny_pipeline, PROMPTS[:2], [0, 1], return_progression=True)
    assert result.progression is not None and len(result.progression) == len(result.codes)
    assert all(frame.shape == result.images.shape for frame in result.progression)
    assert torch.equal(result.progression[-1], result.images)
    plain = generate(tiny_pipeline, PROMPTS[:2], [0, 1])
    torch.testing.assert_close(plain.images, result.images)
    # frame 0 is the mean colour of the first scale's reconstruction: one colour over the whole image
    first = result.progression[0]
    assert torch.equal(first, first[:, :, :1, :1].expand_as(first))
    scale0 = tiny_pipeline.tokenizer.decode(result.codes[:1])
    torch.testing.assert_close(first[:, :, 0, 0], scale0.mean(dim=(2, 3)))
    # frame 1 (2x2 scale): four sectors
    second = result.progression[1]
    half = second.shape[-1] // 2
    assert torch.equal(second, second[:, :, ::half, ::half].repeat_interleave(half, -1).repeat_interleave(half, -2))


def test_training_mode_is_refused(tiny_pipeline: Pipeline) -> None:
    tiny_pipeline.transformer.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            generate(tiny_pipeline, PROMPTS[:1])
    finally:
        tiny_pipeline.transformer.eval()


# -- sample.py ----------------------------------------------------------------------------------------


def test_cli_parses_repeated_prompts_and_documents_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = tyro.cli(SampleArgs, args=["--prompt", "a cat", "--prompt", "a dog", "--cfg", "2", "--top-k", "5"])
    assert args.prompt == ("a cat", "a dog")
    assert (args.sampling_config().cfg_scale, args.sampling_config().top_k) == (2.0, 5)
    with pytest.raises(SystemExit):
        tyro.cli(SampleArgs, args=["--help"])
    help_text = capsys.readouterr().out
    for option in ("--prompts-file", "--num-images", "--guidance-off-last", "--save-progression", "--checkpoint"):
        assert option in help_text


def test_cli_end_to_end(
    tiny_pipeline: Pipeline, tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a woman with glasses\n\n")
    args = SampleArgs(
        prompt=("a man with a beard",),
        prompts_file=prompts_file,
        num_images=2,
        seed=3,
        checkpoint=str(tiny_pipeline_dir),
        out=tmp_path / "out",
        batch_size=3,
        save_progression=True,
        progress=False,
        device="cpu",
        decoder_dtype="float32",  # decode as `tiny_pipeline` does, which the last check compares with
    )
    written = main(args)
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    stems = [
        image_stem(index, prompt)
        for index, prompt in enumerate(["a man with a beard"] * 2 + ["a woman with glasses"] * 2)
    ]
    assert names == sorted(
        [
            "grid.png",
            *[f"{stem}{suffix}" for stem in stems for suffix in (".png", "-progression.png", "-progression.gif")],
        ]
    )
    assert set(written) == {tmp_path / "out" / name for name in names}
    assert str(tmp_path / "out") in capsys.readouterr().out
    # batching does not change the images: image 2 (seed 5) alone equals image 2 of the batch run
    single = generate(tiny_pipeline, ["a woman with glasses"], [5])
    saved = np.asarray(Image.open(tmp_path / "out" / f"{stems[2]}.png"))
    assert np.array_equal(saved, to_arrays(single.images)[0])


def test_hub_pipeline_ids_download_every_part(tiny_pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls = []

    def fake_download(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        return str(tiny_pipeline_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loaded = pipeline_module.load_pipeline("someone/nextscale-tiny")
    assert loaded.directory == tiny_pipeline_dir
    assert calls == [("someone/nextscale-tiny", ["pipeline.json", "*/config.json", "*/model.safetensors"])]


def test_slugs() -> None:
    assert slugify("A man, with a BEARD!") == "a-man-with-a-beard"
    assert slugify("") == "unconditional" and len(slugify("word " * 40)) <= 40


def test_cli_errors(tmp_path: Path, write_tiny_pipeline: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no prompt"):
        main(SampleArgs(out=tmp_path))
    with pytest.raises(ValueError, match="no model directory|no pipeline.json"):
        main(SampleArgs(prompt=("a",), checkpoint=str(tmp_path / "missing"), out=tmp_path))
    monkeypatch.setattr(pipeline_module, "DEMO_PIPELINE", tmp_path / "no-demo")
    with pytest.raises(ValueError, match="demo model is missing.*--checkpoint"):
        main(SampleArgs(prompt=("a",), out=tmp_path))
    mismatched = write_tiny_pipeline(tmp_path / "mismatched", transformer_overrides={"vocab_size": 32})
    with pytest.raises(ValueError, match="vocab_size: transformer 32 vs tokenizer 64"):
        main(SampleArgs(prompt=("a",), checkpoint=str(mismatched), out=tmp_path))


@pytest.mark.parametrize(
    ("count", "group", "shape"),  # shape: (columns, rows)
    [(1, 1, (1, 1)), (4, 4, (2, 2)), (8, 4, (4, 2)), (20, 2, (4, 5)), (21, 7, (7, 3)), (160, 160, (16, 10)),
     (97, 97, (10, 10)), (100, 1, (10, 10)), (100, 160, (10, 10))],
)
def test_grid_layout_is_close_to_square(count: int, group: int, shape: tuple[int, int]) -> None:
    columns = grid_columns(count, group)
    rows = -(-count // columns)
    assert (columns, rows) == shape
    square = -(-count**0.5 // 1)
    assert columns <= 2 * square and rows <= 2 * square  # never a long strip
    if group <= columns:
        assert columns % group == 0  # each prompt's images stay together on one row
    grid = make_grid(torch.zeros(count, 3, 4, 4), columns, padding=2)
    assert grid.size == (columns * 6 + 2, rows * 6 + 2)


def test_cli_grid_is_square_and_capped(tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    args = SampleArgs(prompt=("a portrait",), num_images=12, grid_max=9, checkpoint=str(tiny_pipeline_dir),
                      out=tmp_path / "out", batch_size=4, progress=False, device="cpu")
    written = main(args)
    assert len([path for path in written if path.name != "grid.png"]) == 12
    side = 16 + 2  # tiny images are 16 px, with 2 px of padding
    assert Image.open(tmp_path / "out" / "grid.png").size == (3 * side + 2, 3 * side + 2)  # the first 9, 3 x 3
    assert "the first 9 of 12; --grid-max N for more" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--grid-max must be >= 1"):
        SampleArgs(prompt=("a portrait",), grid_max=0)


def test_recommended_sampling_settings_travel_with_the_pipeline(
    tiny_pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from nextscale.sampling.pipeline import load_pipeline, record_sampling

    directory = Path(shutil.copytree(tiny_pipeline_dir, tmp_path / "pipeline"))
    assert load_pipeline(directory).recommended is None
    main(SampleArgs(prompt=("a portrait",), checkpoint=str(directory), out=tmp_path / "plain", progress=False,
                    device="cpu", top_k=5))  # no recommendation: the line says the defaults are used
    assert ("sampling with the defaults (VAR's demo settings; the pipeline records no recommended settings): cfg 4, "
            "top-k 5, top-p 0.95; --cfg, --top-p override them") in capsys.readouterr().out
    record_sampling(directory, 2.0, None, 1.0, "an evaluation")
    pipeline = load_pipeline(directory)
    assert pipeline.recommended == {"cfg_scale": 2.0, "top_k": None, "top_p": 1.0, "source": "an evaluation"}
    args = SampleArgs(prompt=("a portrait",), checkpoint=str(directory), out=tmp_path / "out", progress=False,
                      device="cpu")
    config = args.sampling_config(pipeline.recommended)
    assert (config.cfg_scale, config.top_k, config.top_p) == (2.0, None, 1.0)
    # each option given on the command line wins; without a recommendation the defaults are SamplingConfig's
    config = SampleArgs(cfg=3.0, top_k=5).sampling_config(pipeline.recommended)
    assert (config.cfg_scale, config.top_k, config.top_p) == (3.0, 5, 1.0)
    defaults = SampleArgs().sampling_config()
    assert (defaults.cfg_scale, defaults.top_k, defaults.top_p) == (4.0, 900, 0.95)
    main(args)
    out = capsys.readouterr().out
    assert "sampling with the pipeline's recommended settings (an evaluation): cfg 2, top-k off, top-p 1" in out
    main(SampleArgs(prompt=("a portrait",), checkpoint=str(directory), out=tmp_path / "again", progress=False,
                    device="cpu", cfg=1.0, top_k=0, top_p=0.9))
    assert "the pipeline's recommended settings" not in capsys.readouterr().out
    spec = json.loads((directory / "pipeline.json").read_text())
    spec["sampling"]["top_k"] = -1
    (directory / "pipeline.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="sampling.top_k is -1"):
        load_pipeline(directory)
