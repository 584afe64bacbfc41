"""Sampling: filtering and guidance edge cases, cache parity, seeding, guidance switch-off, the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from PIL import Image

from nextscale.images import to_arrays
from nextscale.sampling import pipeline as pipeline_module
from nextscale.sampling.cli import SampleArgs, main
from nextscale.sampling.filtering import filter_logits, sample_codes, top_k_filter, top_p_filter
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
